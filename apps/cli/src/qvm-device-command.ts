import { Command, Option } from 'commander';
import { Errors, parseDeviceArgument } from '@devgate/core';
import { type Io } from './io.js';
import { type AccessOptions, type DeviceAccess, assertDeviceClass, holderOf, withAccess } from './device-access.js';
import { formatInfo, formatLegacyBlockList, formatLegacyList, formatQubesTable } from './format.js';
import { addHostOptions } from './host-options.js';
import { addUsbAuthorizationCommands } from './usb-command.js';
import { detachAndReattach } from './pci-command.js';
import { addInputCommands } from './input-command.js';

/** Qubes lets only these classes be `required` (USB cannot). */
const REQUIRABLE = new Set(['block', 'pci']);

/**
 * `qvm-device CLASS ...`, and `qvm-block` / `qvm-usb` / `qvm-pci`, which fix the class: Qubes 4.3's
 * subcommands and, for the seed's users, the old flag form (`-l`, `-a VM DEV`, `-d [VM] [DEV]`).
 */
export function qvmDeviceProgram(prog: string, devclass: string | undefined, io: Io): Command {
  if (devclass === undefined) {
    const program = new Command(prog)
      .description('manage devices of VMs')
      .option('--list-device-classes, --list-classes', 'list device classes')
      .argument('[class]', 'device class')
      .argument('[args...]')
      .enablePositionalOptions()
      .passThroughOptions()
      .allowUnknownOption()
      .helpOption('-h, --help')
      .action(async (cls: string | undefined, args: string[], options: { listClasses?: boolean }) => {
        if (options.listClasses) return withAccess({}, io, (access) => printClasses(access, io));
        if (!cls) throw usage('the following arguments are required: class');
        await classProgram(`${prog} ${cls}`, cls, io, { checkClass: true }).parseAsync(args, { from: 'user' });
      });
    return quiet(program, io);
  }
  return classProgram(prog, devclass, io);
}

/** The classes are the loaded drivers' (through devgated: those it loaded), never a list here. */
async function printClasses(access: DeviceAccess, io: Io): Promise<void> {
  io.out((await access.classes()).map((c) => c + '\n').join(''));
}

/** Qubes' VMNAME is checked while parsing, before the device or anything else is touched. */
async function assertDomain(access: DeviceAccess, vm: string): Promise<void> {
  if (!(await access.domains()).includes(vm)) throw Errors.noConnector({ domain: vm });
}

type WithAccess = <T>(options: AccessOptions, io: Io, work: (access: DeviceAccess) => Promise<T>) => Promise<T>;

/** withAccess, after checking that a loaded driver has the class (for a class the user named). */
function accessFor(devclass: string, check: boolean): WithAccess {
  if (!check) return withAccess;
  return (options, io, work) =>
    withAccess(options, io, async (access) => {
      await assertDeviceClass(access, devclass);
      return work(access);
    });
}

interface AttachFlags {
  readonly option?: string[];
  readonly ro?: boolean;
}

/**
 * The commands of one device class. `checkClass`: the class was named by the user (`qvm-device
 * CLASS`, `devgate CLASS`), so it must be one a loaded driver has: DG_UNKNOWN_DEVICE_CLASS otherwise.
 */
export function classProgram(prog: string, devclass: string, io: Io, options: { checkClass?: boolean } = {}): Command {
  const withClass = accessFor(devclass, options.checkClass ?? false);
  const program = quiet(new Command(prog), io)
    .description(`list and manage ${devclass} devices`)
    // Options after a subcommand are the subcommand's (`attach -o ...` is not the old `-o`).
    .enablePositionalOptions()
    .addOption(new Option('-v, --verbose', 'increase verbosity'))
    .addOption(new Option('-q, --quiet', 'decrease verbosity'))
    .addOption(new Option('-l, --list', 'list devices (old form)').hideHelp())
    .addOption(new Option('-a, --attach', 'attach VM DEVICE (old form)').hideHelp())
    .addOption(new Option('-d, --detach', 'detach [VM] [DEVICE] (old form)').hideHelp())
    .addOption(new Option('--ro', 'attach read-only (old form)').hideHelp())
    .addOption(new Option('-o, --option <name=value>', 'attach option (old form)').argParser(collect).hideHelp())
    // A global option of Qubes' qvm-device, so qvm-block's too.
    .option('--list-device-classes, --list-classes', 'list device classes')
    .argument('[args...]');
  addHostOptions(program);
  const common = <T>(options: T) => ({ ...program.opts<AccessOptions & { quiet?: boolean }>(), ...options });

  program.action(
    (
      args: string[],
      options: AttachFlags &
        AccessOptions & { list?: boolean; attach?: boolean; detach?: boolean; listClasses?: boolean },
    ) =>
      withClass(options, io, async (access) => {
        if (options.listClasses) return printClasses(access, io);
        if (options.attach) {
          if (args.length !== 2) throw usage('-a/--attach takes VMNAME BACKEND:DEVICE');
          return access.attach(devclass, args[0], args[1], attachOptions(options));
        }
        if (options.detach) {
          if (args.length < 1 || args.length > 2) throw usage('-d/--detach takes [VMNAME] [BACKEND:DEVICE]');
          const device = args.find((a) => a.includes(':'));
          const vm =
            args.find((a) => !a.includes(':')) ?? (device ? await holderOf(access, devclass, device) : undefined);
          return access.detach(devclass, vm!, device);
        }
        if (args.length > 0)
          throw usage(`invalid choice: '${args[0]}' (choose from list, attach, detach, assign, unassign, info)`);
        const devices = await access.list({ devclass });
        // The seed's `qvm-usb` alone prints the old lines; a bare `qvm-block` prints Qubes 4.3's table.
        if (options.list || devclass === 'usb') {
          io.out(devclass === 'block' ? formatLegacyBlockList(devices) : formatLegacyList(devices));
        } else io.out(formatQubesTable(devices, io.isTTY));
      }),
  );

  subcommand(program, 'list', ['ls', 'l'], 'list devices')
    .argument('[VMNAME...]', 'list only devices of these domains')
    .option('--all', 'list devices of all domains')
    .option('--exclude <vm>', 'exclude a domain from --all', collect, [])
    .option('-s, --assignments', 'also list assignments')
    .option('--with-sbdf, --resolve-paths', 'show the PCI SBDF (pci only)')
    .action((vms: string[], options: ListFlags & AccessOptions) =>
      list(devclass, vms, options, common(options), io, withClass),
    );

  subcommand(program, 'attach', ['at', 'a'], 'Attach device to domain')
    .argument('VMNAME', 'the frontend domain')
    .argument('BACKEND:PORT_ID[:DEVICE_ID]', 'the device')
    .option('-o, --option <name=value>', 'an attach option (frontend-dev, read-only, devtype, bus)', collect, [])
    .option('--ro', 'attach read-only')
    .option('-p, --persistent', 'also assign it, as required')
    .action((vm: string, device: string, options: AttachFlags & AccessOptions & { persistent?: boolean }) =>
      withClass(common(options), io, async (access) => {
        await assertDomain(access, vm);
        const attachOpts = attachOptions(options);
        if (!options.persistent) return access.attach(devclass, vm, device, attachOpts);
        // Qubes' --persistent: attach now, then assign as required, even if the attach failed. Only
        // devgated keeps assignments: without it, refused before anything is attached.
        access.requireDaemon('attach --persistent, which assigns the device,');
        await access.attach(devclass, vm, device, attachOpts).catch(() => undefined);
        await access.assign({ devclass, frontend: vm, device, mode: 'required', options: attachOpts });
      }),
    );

  const detach = subcommand(program, 'detach', ['dt', 'd'], 'Detach device from domain')
    .argument('VMNAME', 'the frontend domain')
    .argument('[BACKEND:PORT_ID[:DEVICE_ID]]', 'the device (default: every device of this class)');
  // PCI: give the device back to its host driver afterwards (Qubes never does; devgate on request).
  if (devclass === 'pci') detach.option('--reattach', "then give it back to the host's driver (from vfio-pci)");
  detach.action((vm: string, device: string | undefined, options: AccessOptions & { reattach?: boolean }) =>
    withClass(common(options), io, async (access) => {
      await assertDomain(access, vm);
      if (!options.reattach) return access.detach(devclass, vm, device);
      if (!device) throw Errors.badOption({ option: '--reattach', reason: 'names one device' });
      return detachAndReattach(access, common(options), vm, device, io);
    }),
  );

  subcommand(program, 'assign', ['s'], 'Assign device to domain or edit existing assignment')
    .argument('VMNAME', 'the frontend domain')
    .argument('BACKEND:PORT_ID[:DEVICE_ID]', 'the device')
    .option('-o, --option <name=value>', 'an option used when it is attached', collect, [])
    .option('--ro', 'attach read-only')
    .addOption(new Option('--ask, --ask-to-attach', 'ask before attaching').conflicts('required'))
    .addOption(new Option('-r, --required', 'the domain cannot start without it'))
    .addOption(new Option('--port, --only-port', 'any device in this port').conflicts('device'))
    .addOption(new Option('--device, --only-device', 'this device in any port'))
    .action((vm: string, device: string, options: AssignFlags) =>
      withClass(common(options), io, async (access) => {
        // Qubes' client: a PCI device is assigned as required, or not at all.
        if (devclass === 'pci' && !options.required) throw Errors.pciNotRequired();
        if (options.required && !REQUIRABLE.has(devclass)) {
          throw Errors.unsupportedOption({
            option: 'required',
            message: 'Only pci and block devices can be assigned as required.',
          });
        }
        const mode = options.required ? 'required' : options.askToAttach ? 'ask-to-attach' : 'auto-attach';
        const only = options.onlyPort ? 'port' : options.onlyDevice ? 'device' : undefined;
        await access.assign({ devclass, frontend: vm, device, mode, only, options: attachOptions(options) });
        const { backend, portId } = parseDeviceArgument(device);
        const now = (await access.list({ devclass, all: true })).find(
          (d) => d.backend === backend && d.portId === portId,
        );
        if (!common(options).quiet && now?.attachment?.frontend !== vm) {
          const extra = Object.entries(attachOptions(options))
            .map(([k, v]) => ` -o ${k}=${v}`)
            .join('');
          io.out(
            `Assigned. To attach you can now restart domain or run: \n\tqvm-${devclass} attach${extra} ${vm} ${backend}:${portId}\n`,
          );
        }
      }),
    );

  subcommand(program, 'unassign', ['u'], 'Remove assignment of device from domain')
    .argument('VMNAME', 'the frontend domain')
    .argument('[BACKEND:PORT_ID[:DEVICE_ID]]', 'the device (default: every assignment of this class)')
    .addOption(new Option('--port, --only-port', 'the assignment of this port').conflicts('device'))
    .addOption(new Option('--device, --only-device', 'the assignment of this device in any port'))
    .action((vm: string, device: string | undefined, options: AssignFlags) =>
      withClass(common(options), io, async (access) => {
        const only = options.onlyPort ? 'port' : options.onlyDevice ? 'device' : undefined;
        await access.unassign({ devclass, frontend: vm, device, only });
      }),
    );

  // devgate's USB authorization (USBGuard-compatible): allow, block, reject, generate-policy, rules.
  if (devclass === 'usb') addUsbAuthorizationCommands(program, io);
  // devgate's input policy (Qubes' qubes.Input* services): check, defaults, explain.
  if (devclass === 'input') addInputCommands(program, io);

  subcommand(program, 'info', ['i'], 'Show info about device from domain')
    .argument('[BACKEND:PORT_ID]', 'the device')
    .action((device: string | undefined, options: AccessOptions) =>
      withClass(common(options), io, async (access) => {
        let devices = await access.list({ devclass, all: true });
        if (device !== undefined) {
          const wanted = parseDeviceArgument(device);
          const backends = new Set([...(await access.domains()), ...devices.map((d) => d.backend)]);
          if (!backends.has(wanted.backend)) throw Errors.noSuchBackend({ backend: wanted.backend });
          devices = devices.filter((d) => d.backend === wanted.backend && d.portId === wanted.portId);
          if (devices.length === 0)
            throw Errors.unknownDevice({ backend: wanted.backend, devclass, port: wanted.portId });
          // Qubes' info takes a port: a device ID other than the one in it is refused, never ignored.
          const { deviceId } = wanted;
          if (deviceId !== undefined && deviceId !== '*' && deviceId !== devices[0].deviceId) {
            throw Errors.unsupportedOption({
              option: 'DEVICE_ID',
              message: 'this option works only for explicitly given port ID and does not support device ID',
            });
          }
        }
        io.out(devices.map(formatInfo).join('\n'));
      }),
    );
  return program;
}

interface ListFlags {
  /** `--with-sbdf, --resolve-paths` (commander names it after the last flag). */
  readonly resolvePaths?: boolean;
  readonly all?: boolean;
  readonly exclude?: string[];
  readonly assignments?: boolean;
}

interface AssignFlags extends AttachFlags, AccessOptions {
  readonly askToAttach?: boolean;
  readonly required?: boolean;
  readonly onlyPort?: boolean;
  readonly onlyDevice?: boolean;
}

function subcommand(program: Command, name: string, aliases: string[], description: string): Command {
  return addHostOptions(program.command(name).aliases(aliases).description(description));
}

async function list(
  devclass: string,
  vms: string[],
  flags: ListFlags,
  options: AccessOptions,
  io: Io,
  withClass: WithAccess,
): Promise<void> {
  if (flags.exclude?.length && !flags.all) {
    throw usage('--exclude can only be used with --all');
  }
  await withClass({ ...options, readOnly: true }, io, async (access: DeviceAccess) => {
    const devices = await access.list({ devclass });
    const known = new Set([...(await access.domains()), ...devices.map((d) => d.backend)]);
    for (const vm of vms) if (!known.has(vm)) throw usage(`no such domain: '${vm}'`);
    const excluded = new Set(flags.exclude ?? []);
    const shown = devices.filter(
      (d) =>
        !excluded.has(d.backend) &&
        (vms.length === 0 || vms.includes(d.backend) || (d.attachment !== null && vms.includes(d.attachment.frontend))),
    );
    const assignments = flags.assignments
      ? (await access.assignments(devclass)).filter((a) => vms.length === 0 || vms.includes(a.frontend))
      : [];
    // --with-sbdf is PCI's; Qubes ignores it for other classes.
    io.out(formatQubesTable(shown, io.isTTY, assignments, { sbdf: devclass === 'pci' && Boolean(flags.resolvePaths) }));
  });
}

/** `-o name=value` pairs and `--ro`, normalized as Qubes' client does. */
export function attachOptions(flags: AttachFlags): Record<string, string> {
  const options: Record<string, string> = {};
  for (const pair of flags.option ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw Errors.badOption({ option: '--option', reason: `expected name=value, got '${pair}'` });
    let [name, value] = [pair.slice(0, eq), pair.slice(eq + 1)];
    if (name === 'ro') {
      name = 'read-only';
      const bool = value.toLowerCase();
      if (['true', '1', 'yes'].includes(bool)) value = 'yes';
      else if (['false', '0', 'no'].includes(bool)) value = 'no';
      else throw Errors.unsupportedOption({ option: 'ro', message: `Unknown \`read-only\` option value: ${value}` });
    }
    options[name] = value;
  }
  if (flags.ro) options['read-only'] = 'yes';
  return options;
}

/** argparse's `parser.error`: the message alone, after the usage line (exit 2). */
function usage(reason: string): Error {
  return Errors.badOption({ reason });
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Commander prints to the process by default; route it through the command's Io. */
function quiet(command: Command, io: Io): Command {
  return command.exitOverride().configureOutput({ writeOut: io.out, writeErr: () => undefined });
}
