import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { type Io } from './io.js';
import { type HostOptions, openHost } from './host.js';
import { deviceToJson, formatDevgateTable } from './format.js';
import { addHostOptions } from './main.js';
import { DEVICE_CLASSES, classProgram } from './qvm-device-command.js';

/** `devgate`: devgate's own commands, plus `devgate <class> ...` for the Qubes-compatible ones. */
export function devgateProgram(io: Io): Command {
  const program = new Command('devgate')
    .description('Qubes OS-style device handling for Linux hosts that run virtual machines')
    .version(packageVersion())
    .exitOverride()
    .enablePositionalOptions()
    .configureOutput({ writeOut: io.out, writeErr: () => undefined });

  const list = program
    .command('list')
    .description('list devices of every class')
    .addOption(new Option('--class <class>', 'only this device class').choices([...DEVICE_CLASSES]))
    .option('--json', 'print JSON (one array of devices)')
    .option('--all', 'also list devices hidden because they are in use, with the reason');
  addHostOptions(list).action(async (options: HostOptions & { class?: string; json?: boolean; all?: boolean }) => {
    const opened = await openHost(options);
    try {
      const devices = opened.manager.list({ devclass: options.class, includeHidden: options.all });
      if (options.json) io.out(JSON.stringify(devices.map(deviceToJson), null, 2) + '\n');
      else io.out(formatDevgateTable(devices, Boolean(options.all)));
    } finally {
      opened.close();
    }
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
