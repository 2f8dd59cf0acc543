import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { labBackendUp, labList, labUp } from '@devgate/backend-qemu';
import { defaultLibvirtUri, libvirtLabDown, libvirtLabUp } from '@devgate/backend-libvirt';
import { Errors } from '@devgate/core';
import { type Io } from './io.js';
import { type AccessOptions, assertDeviceClass, holderOf, withAccess } from './device-access.js';
import { assertRequiredDevices } from './required-devices.js';
import { formatColumns, formatDevgateTable } from './format.js';
import { addLabGuestCommands, addLabUpOsOptions, labDownAll, labUpOs, registryOf } from './lab-command.js';
import { addUsbVmCommands } from './usbvm-command.js';
import { addHostOptions } from './host-options.js';
import { attachOptions } from './qvm-device-command.js';
import { addDriversCommand } from './drivers-command.js';
import { addPolicyCommands } from './policy-command.js';
import { addUsbControllersCommand } from './usb-controllers-command.js';

/** `devgate`: devgate's own commands, plus `devgate <class> ...` for the Qubes-compatible ones. */
export function devgateProgram(io: Io): Command {
  const program = new Command('devgate')
    .description('Qubes OS-style device handling for Linux hosts that run virtual machines')
    .version(packageVersion())
    .exitOverride()
    .enablePositionalOptions()
    .configureOutput({ writeOut: io.out, writeErr: () => undefined });
  // Classes are the loaded drivers' (devgate drivers): checked when used, never listed here.
  const classOption = () => new Option('--class <class>', 'the device class').default('block');

  addHostOptions(program.command('list').description('list devices of every class'))
    .addOption(new Option('--class <class>', 'only this device class (devgate drivers lists them)'))
    .option('--json', 'print JSON (one array of devices)')
    .option('--all', 'also list devices hidden because they are in use, with the reason')
    .action((options: AccessOptions & { class?: string; json?: boolean; all?: boolean }) =>
      withAccess({ ...options, readOnly: true }, io, async (access) => {
        if (options.class !== undefined) await assertDeviceClass(access, options.class);
        const devices = await access.list({ devclass: options.class, all: options.all });
        io.out(
          options.json ? JSON.stringify(devices, null, 2) + '\n' : formatDevgateTable(devices, Boolean(options.all)),
        );
      }),
    );

  addHostOptions(program.command('attach').description('attach a device to a VM'))
    .argument('VMNAME')
    .argument('BACKEND:PORT_ID[:DEVICE_ID]')
    .addOption(classOption())
    .option('-o, --option <name=value>', 'an attach option', (v: string, p: string[] = []) => [...p, v], [])
    .option('--ro', 'attach read-only')
    .action((vm: string, device: string, options: AccessOptions & { class: string; option?: string[]; ro?: boolean }) =>
      withAccess(options, io, (access) => access.attach(options.class, vm, device, attachOptions(options))),
    );

  addHostOptions(program.command('detach').description('detach a device from a VM (all of the class without one)'))
    .argument('VMNAME')
    .argument('[BACKEND:PORT_ID[:DEVICE_ID]]')
    .addOption(classOption())
    .action((vm: string, device: string | undefined, options: AccessOptions & { class: string }) =>
      withAccess(options, io, async (access) =>
        access.detach(
          options.class,
          vm.includes(':') ? await holderOf(access, options.class, vm) : vm,
          vm.includes(':') ? vm : device,
        ),
      ),
    );

  addHostOptions(program.command('audit').description('query the audit log (devgated)'))
    .option('--since <time>', 'ISO 8601 time, inclusive')
    .option('--until <time>', 'ISO 8601 time, exclusive')
    .option('--action <action>', 'attach, detach, assign, unassign, policy, ask, answer, auto-attach, ...')
    .option('--frontend <vm>', 'only this frontend')
    .addOption(new Option('--class <class>', 'only this device class'))
    .option('--limit <n>', 'at most this many entries', '100')
    .option('--json', 'print JSON')
    .action((options: AccessOptions & Record<string, string | boolean | undefined>) =>
      withAccess(options, io, async (access) => {
        const query = new URLSearchParams({ order: 'desc' });
        for (const key of ['since', 'until', 'action', 'frontend', 'class', 'limit'] as const) {
          if (typeof options[key] === 'string') query.set(key, options[key] as string);
        }
        const { entries } = await access.daemon<{ entries: AuditRow[] }>('GET', `/v1/audit?${query}`);
        if (options.json) return io.out(JSON.stringify(entries, null, 2) + '\n');
        const rows = entries.map((e) => [
          e.at,
          e.actor,
          e.action,
          e.backend && e.portId ? `${e.backend}:${e.portId}` : '-',
          e.frontend ?? '-',
          e.outcome + (e.code ? ` (${e.code})` : ''),
          e.reason ?? '',
        ]);
        io.out(formatColumns([['TIME', 'WHO', 'ACTION', 'DEVICE', 'FRONTEND', 'OUTCOME', 'WHY'], ...rows]));
      }),
    );

  const ask = program.command('ask').description('questions devgated is waiting on');
  addHostOptions(ask.command('list').description('list pending questions')).action((options: AccessOptions) =>
    withAccess(options, io, async (access) => {
      const { asks } = await access.daemon<{ asks: AskRow[] }>('GET', '/v1/asks');
      io.out(
        formatColumns([
          ['ID', 'DEVICE', 'DESCRIPTION', 'TO', 'EXPIRES'],
          ...asks.map((a) => [a.id, a.device, a.description, a.candidates.join(','), a.expiresAt]),
        ]),
      );
    }),
  );
  addHostOptions(ask.command('answer').description('answer a question'))
    .argument('ID')
    .addArgument(new Command().createArgument('VERDICT', 'allow or deny').choices(['allow', 'deny']))
    .option('--frontend <vm>', 'which of the candidate VMs (default: the first)')
    .option('--remember', 'remember the answer as a rule')
    .action((id: string, verdict: string, options: AccessOptions & { frontend?: string; remember?: boolean }) =>
      withAccess(options, io, async (access) => {
        await access.daemon('POST', `/v1/asks/${encodeURIComponent(id)}/answer`, {
          verdict,
          ...(options.frontend ? { frontend: options.frontend } : {}),
          ...(options.remember ? { remember: true } : {}),
        });
      }),
    );

  // Deny lists, remembered answers and assignments (devgated's state).
  addPolicyCommands(program, io);

  // The USB-controller report and hiding controllers at boot (driver-pci).
  addUsbControllersCommand(program, io);

  program
    .command('config')
    .description('devgated configuration')
    .command('check')
    .description('check a devgated configuration file; problems are printed as FILE:LINE:COLUMN')
    .argument('FILE')
    .action(async (file: string) => {
      const { checkConfig, formatIssue, readConfigFile } = await import('@devgate/service');
      let text: string;
      try {
        text = readConfigFile(file);
      } catch (error) {
        // Said as devgated --check-config says it, without DG_CONFIG_INVALID's hint: it names this command.
        io.err(`devgate: error: ${(error as Error).message}\n`);
        throw Object.assign(new Error('unreadable configuration'), { exitCode: 1, silent: true });
      }
      const { issues } = checkConfig(text, file);
      if (issues.length === 0) return io.out(`${file}: ok\n`);
      io.err(issues.map((issue) => formatIssue(issue) + '\n').join(''));
      throw Object.assign(new Error('invalid configuration'), { exitCode: 1, silent: true });
    });

  const lab = program
    .command('lab')
    .description('lab VMs: paused QEMU machines, or real Linux guests (--os), for demos and tests');
  const registry = (command: Command) =>
    command.addOption(new Option('--domains <file>', 'the domain registry').env('DEVGATE_DOMAINS'));
  addLabUpOsOptions(registry(lab.command('up').description('start lab VMs and register them').argument('NAME...')))
    .option('--recording <file>', 'instead: register NAME as a backend domain replaying this recorded host')
    .option('--libvirt', 'instead: define and start NAME as a throwaway libvirt domain ($LIBVIRT_DEFAULT_URI)')
    .action(async (names: string[], options: { domains?: string; recording?: string; os?: boolean }) => {
      if (options.os) return labUpOs(names, options, io);
      if (options.recording) {
        if (names.length !== 1) throw Errors.badOption({ option: '--recording', reason: 'names one backend domain' });
        await labBackendUp(names[0], options.recording, { registryFile: options.domains });
        return io.out(formatColumns([[names[0], 'recording', options.recording]]));
      }
      await withAccess({ domains: options.domains }, io, (access) => assertRequiredDevices(access, names));
      if ((options as { libvirt?: boolean }).libvirt) {
        const uri = defaultLibvirtUri();
        return io.out(formatColumns((await libvirtLabUp(names, { uri })).map((name) => [name, 'libvirt', uri])));
      }
      const started = await labUp(names, registryOf(options));
      io.out(formatColumns(started.map((d) => [d.name, `pid ${d.pid}`, d.socket])));
    });
  registry(lab.command('down').description('stop lab VMs and unregister them').argument('[NAME...]'))
    .option('--libvirt', 'instead: destroy and undefine libvirt lab domains (made by lab up --libvirt)')
    .action(async (names: string[], options: { domains?: string; libvirt?: boolean }) => {
      if (options.libvirt) return void (await libvirtLabDown(names, { uri: defaultLibvirtUri() }));
      await labDownAll(names, options);
    });
  registry(lab.command('list').description('list lab VMs')).action(async (options: { domains?: string }) => {
    const domains = await labList(registryOf(options));
    io.out(formatColumns(domains.map((d) => [d.name, d.running ? 'running' : 'stopped', String(d.pid), d.socket])));
  });
  addLabGuestCommands(lab, io, registry);
  addUsbVmCommands(program, io);

  // What is loaded, from where, and its health.
  addDriversCommand(program, io);

  // `devgate CLASS ...` is `qvm-device CLASS ...` for every loaded class (main.ts dispatches it).
  program.addHelpText(
    'after',
    '\n  devgate CLASS ...  the same as qvm-device CLASS ... (block, usb, ...: devgate drivers lists them)\n',
  );
  return program;
}

interface AuditRow {
  at: string;
  actor: string;
  action: string;
  backend?: string;
  portId?: string;
  frontend?: string;
  outcome: string;
  code?: string;
  reason?: string;
}

interface AskRow {
  id: string;
  device: string;
  description: string;
  candidates: string[];
  expiresAt: string;
}

function packageVersion(): string {
  const manifest = fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8');
  return (JSON.parse(manifest) as { version: string }).version;
}
