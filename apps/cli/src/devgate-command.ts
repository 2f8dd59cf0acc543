import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { labDown, labList, labUp } from '@devgate/backend-qemu';
import { type Io } from './io.js';
import { type HostOptions, withHost } from './host.js';
import { deviceToJson, formatColumns, formatDevgateTable } from './format.js';
import { addHostOptions } from './main.js';
import { DEVICE_CLASSES, classProgram } from './qvm-device-command.js';
import { type AttachFlags, attachDevice, detachDevice } from './device-actions.js';

/** `devgate`: devgate's own commands, plus `devgate <class> ...` for the Qubes-compatible ones. */
export function devgateProgram(io: Io): Command {
  const program = new Command('devgate')
    .description('Qubes OS-style device handling for Linux hosts that run virtual machines')
    .version(packageVersion())
    .exitOverride()
    .enablePositionalOptions()
    .configureOutput({ writeOut: io.out, writeErr: () => undefined });
  const classOption = () =>
    new Option('--class <class>', 'the device class').choices([...DEVICE_CLASSES]).default('block');

  const list = program
    .command('list')
    .description('list devices of every class')
    .addOption(new Option('--class <class>', 'only this device class').choices([...DEVICE_CLASSES]))
    .option('--json', 'print JSON (one array of devices)')
    .option('--all', 'also list devices hidden because they are in use, with the reason');
  addHostOptions(list).action((options: HostOptions & { class?: string; json?: boolean; all?: boolean }) =>
    withHost(options, ({ manager }) => {
      const devices = manager.list({ devclass: options.class, includeHidden: options.all });
      if (options.json) io.out(JSON.stringify(devices.map(deviceToJson), null, 2) + '\n');
      else io.out(formatDevgateTable(devices, Boolean(options.all)));
    }),
  );

  const attach = program
    .command('attach')
    .description('attach a device to a VM')
    .argument('VMNAME')
    .argument('BACKEND:PORT_ID[:DEVICE_ID]')
    .addOption(classOption())
    .option('-o, --option <name=value>', 'an attach option', (v: string, p: string[] = []) => [...p, v], [])
    .option('--ro', 'attach read-only');
  addHostOptions(attach).action((vm: string, device: string, options: AttachFlags & HostOptions & { class: string }) =>
    attachDevice(options.class, vm, device, options, options),
  );

  const detach = program
    .command('detach')
    .description('detach a device from a VM (every device of the class without one)')
    .argument('VMNAME')
    .argument('[BACKEND:PORT_ID[:DEVICE_ID]]')
    .addOption(classOption());
  addHostOptions(detach).action((vm: string, device: string | undefined, options: HostOptions & { class: string }) =>
    detachDevice(options.class, vm, device, options),
  );

  const lab = program.command('lab').description('lab VMs: paused QEMU machines for demos and tests');
  const registry = (command: Command) =>
    command.addOption(new Option('--domains <file>', 'the domain registry').env('DEVGATE_DOMAINS'));
  registry(lab.command('up').description('start lab VMs and register them').argument('NAME...')).action(
    async (names: string[], options: { domains?: string }) => {
      const started = await labUp(names, { registryFile: options.domains });
      io.out(formatColumns(started.map((d) => [d.name, `pid ${d.pid}`, d.socket])));
    },
  );
  registry(lab.command('down').description('stop lab VMs and unregister them').argument('[NAME...]')).action(
    async (names: string[], options: { domains?: string }) => {
      await labDown(names.length ? names : undefined, { registryFile: options.domains });
    },
  );
  registry(lab.command('list').description('list lab VMs')).action(async (options: { domains?: string }) => {
    const domains = await labList({ registryFile: options.domains });
    io.out(formatColumns(domains.map((d) => [d.name, d.running ? 'running' : 'stopped', String(d.pid), d.socket])));
  });

  for (const devclass of DEVICE_CLASSES) {
    program
      .command(devclass)
      .description(`the same as qvm-${devclass}`)
      .helpOption(false)
      .allowUnknownOption()
      .passThroughOptions()
      .argument('[args...]')
      .action(async (args: string[]) => {
        await classProgram(`devgate ${devclass}`, devclass, io).parseAsync(args, { from: 'user' });
      });
  }
  return program;
}

function packageVersion(): string {
  const manifest = fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8');
  return (JSON.parse(manifest) as { version: string }).version;
}
