import { Command, Option } from 'commander';
import { type DeviceInfo, Errors, describeDevice, parseDeviceArgument, portLabel } from '@devgate/core';
import { type Io } from './io.js';
import { type HostOptions, withHost } from './host.js';
import { attachDevice, detachDevice } from './device-actions.js';
import { formatLegacyBlockList, formatLegacyList, formatQubesTable } from './format.js';
import { addHostOptions } from './main.js';

/** Device classes with a driver in this build. */
export const DEVICE_CLASSES = ['block', 'usb'] as const;

/**
 * `qvm-device CLASS ...`, and `qvm-block` / `qvm-usb` / `qvm-pci`, which fix the class: Qubes 4.3's
 * subcommands (list, info, ...) and, for the seed's users, the old flag form.
 */
export function qvmDeviceProgram(prog: string, devclass: string | undefined, io: Io): Command {
  if (devclass === undefined) {
    const program = new Command(prog)
      .description('manage devices of VMs')
      .option('--list-device-classes', 'list device classes')
      .argument('[class]', 'device class')
      .argument('[args...]')
      .enablePositionalOptions()
      .passThroughOptions()
      .allowUnknownOption()
      .helpOption('-h, --help')
      .action(async (cls: string | undefined, args: string[], options: { listDeviceClasses?: boolean }) => {
        if (options.listDeviceClasses) return io.out(DEVICE_CLASSES.map((c) => c + '\n').join(''));
        if (!cls) throw Errors.badOption({ option: 'class', reason: 'the following arguments are required: class' });
        await classProgram(`${prog} ${cls}`, checkClass(cls), io).parseAsync(args, { from: 'user' });
      });
    return quiet(program, io);
  }
  return classProgram(prog, checkClass(devclass), io);
}

function checkClass(devclass: string): string {
  if (!(DEVICE_CLASSES as readonly string[]).includes(devclass)) {
    throw Errors.unknownDeviceClass({ devclass, known: DEVICE_CLASSES });
  }
  return devclass;
}

export function classProgram(prog: string, devclass: string, io: Io): Command {
  const program = quiet(new Command(prog), io)
    .description(`list and manage ${devclass} devices`)
    // Options after a subcommand are the subcommand's (`attach -o ...` is not the old `-o`).
    .enablePositionalOptions()
    .addOption(new Option('-v, --verbose', 'increase verbosity'))
    .addOption(new Option('-q, --quiet', 'decrease verbosity'))
    // The seed's flag form: -l, -a VM DEVICE, -d [VM] [DEVICE].
    .addOption(new Option('-l, --list', 'list devices (old form)').hideHelp())
    .addOption(new Option('-a, --attach', 'attach VM DEVICE (old form)').hideHelp())
    .addOption(new Option('-d, --detach', 'detach [VM] [DEVICE] (old form)').hideHelp())
    .addOption(new Option('--ro', 'attach read-only (old form)').hideHelp())
    .addOption(new Option('-o, --option <name=value>', 'attach option (old form)').argParser(collect).hideHelp())
    .argument('[args...]');
  addHostOptions(program);
  program.action(async (args: string[], options: LegacyFlags & HostOptions) => {
    if (options.attach) {
      if (args.length !== 2) throw usage('-a/--attach takes VMNAME BACKEND:DEVICE');
      return attachDevice(devclass, args[0], args[1], options, options);
    }
    if (options.detach) {
      if (args.length < 1 || args.length > 2) throw usage('-d/--detach takes [VMNAME] [BACKEND:DEVICE]');
      const device = args.find((a) => a.includes(':'));
      const vm = args.find((a) => !a.includes(':'));
      return detachDevice(devclass, vm, device, options);
    }
    if (args.length > 0) throw usage(`invalid choice: '${args[0]}' (choose from list, attach, detach, info)`);
    if (options.list) return legacyList(devclass, options, io);
    return list(devclass, [], {}, options, io);
  });

  const listCommand = program
    .command('list')
    .aliases(['ls', 'l'])
    .description('list devices')
    .argument('[VMNAME...]', 'list only devices of these domains')
    .option('--all', 'list devices of all domains')
    .option('--exclude <vm>', 'exclude a domain from --all', collect, [])
    .option('-s, --assignments', 'also list assignments')
    .option('--with-sbdf, --resolve-paths', 'show the PCI SBDF (pci only)');
  addHostOptions(listCommand).action(async (vms: string[], options: ListOptions & HostOptions) => {
    return list(devclass, vms, options, { ...program.opts(), ...options }, io);
  });

  const attachCommand = program
    .command('attach')
    .aliases(['at', 'a'])
    .description('Attach device to domain')
    .argument('VMNAME', 'the frontend domain')
    .argument('BACKEND:PORT_ID[:DEVICE_ID]', 'the device')
    .option('-o, --option <name=value>', 'an attach option (frontend-dev, read-only, devtype, bus)', collect, [])
    .option('--ro', 'attach read-only');
  addHostOptions(attachCommand).action(async (vm: string, device: string, options: LegacyFlags & HostOptions) => {
    return attachDevice(devclass, vm, device, options, { ...program.opts(), ...options });
  });

  const detachCommand = program
    .command('detach')
    .aliases(['dt', 'd'])
    .description('Detach device from domain')
    .argument('VMNAME', 'the frontend domain')
    .argument('[BACKEND:PORT_ID[:DEVICE_ID]]', 'the device (default: every device of this class)');
  addHostOptions(detachCommand).action(async (vm: string, device: string | undefined, options: HostOptions) => {
    return detachDevice(devclass, vm, device, { ...program.opts(), ...options });
  });

  const infoCommand = program
    .command('info')
    .alias('i')
    .description('Show info about device from domain')
    .argument('[BACKEND:PORT_ID]', 'the device');
  addHostOptions(infoCommand).action(async (device: string | undefined, options: HostOptions) => {
    return info(devclass, device, { ...program.opts(), ...options }, io);
  });
  return program;
}

interface LegacyFlags {
  readonly list?: boolean;
  readonly attach?: boolean;
  readonly detach?: boolean;
  readonly ro?: boolean;
  readonly option?: string[];
}

function usage(reason: string): Error {
  return Errors.badOption({ option: 'arguments', reason });
}

interface ListOptions {
  readonly all?: boolean;
  readonly exclude?: string[];
  readonly assignments?: boolean;
}

async function list(devclass: string, vms: string[], options: ListOptions, host: HostOptions, io: Io): Promise<void> {
  if (options.exclude?.length && !options.all) {
    throw Errors.badOption({ option: '--exclude', reason: '--exclude can only be used with --all' });
  }
  await withHost(host, (opened) => {
    const known = new Set(opened.manager.domains());
    const devices = opened.manager.list({ devclass });
    for (const device of devices) if (device.attachment) known.add(device.attachment.frontend);
    for (const vm of vms) {
      if (!known.has(vm)) throw Errors.badOption({ option: 'VMNAME', reason: `no such domain: '${vm}'` });
    }
    const excluded = new Set(options.exclude ?? []);
    const shown = devices.filter((d) => {
      if (excluded.has(d.port.backend)) return false;
      if (vms.length === 0) return true;
      return vms.includes(d.port.backend) || (d.attachment !== undefined && vms.includes(d.attachment.frontend));
    });
    io.out(formatQubesTable(shown, io.isTTY));
  });
}

async function legacyList(devclass: string, host: HostOptions, io: Io): Promise<void> {
  await withHost(host, (opened) => {
    const devices = opened.manager.list({ devclass });
    io.out(devclass === 'block' ? formatLegacyBlockList(devices) : formatLegacyList(devices));
  });
}

async function info(devclass: string, arg: string | undefined, host: HostOptions, io: Io): Promise<void> {
  await withHost(host, (opened) => {
    let devices = opened.manager.list({ devclass, includeHidden: true });
    if (arg !== undefined) {
      const wanted = parseDeviceArgument(arg);
      if (!opened.backends.includes(wanted.backend)) throw Errors.noSuchBackend({ backend: wanted.backend });
      devices = devices.filter((d) => d.port.backend === wanted.backend && d.port.portId === wanted.portId);
      if (devices.length === 0) {
        throw Errors.unknownDevice({ backend: wanted.backend, devclass, port: wanted.portId });
      }
    }
    io.out(devices.map(formatInfo).join('\n'));
  });
}

/** Qubes' `info`: the description, the device id, then one `key: value` line per data item. */
function formatInfo(device: DeviceInfo): string {
  const lines = [`${portLabel(device.port)}: ${describeDevice(device)}`, `device ID: ${device.deviceId}`];
  for (const [key, value] of Object.entries(device.data)) lines.push(`${key.replace(/[-_]/g, ' ')}: ${value}`);
  if (device.hiddenReason) lines.push(`hidden: ${device.hiddenReason}`);
  return lines.join('\n') + '\n';
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Commander prints to the process by default; route it through the command's Io. */
function quiet(command: Command, io: Io): Command {
  return command
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: () => undefined })
    .showHelpAfterError(false);
}
