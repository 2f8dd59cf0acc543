/**
 * `devgate lab` for lab VMs with an operating system (@devgate/guest-lab): real Linux guests booted
 * from this host's userland, with emulated USB devices a test or a demo plugs and pulls.
 *
 *   devgate lab up --os NAME... [--device KIND[=IMAGE[:ro]]]... [--iommu] [--memory MIB] [--accel A]
 *   devgate lab exec NAME -- CMD [ARG...]        runs CMD in the guest; its exit status is ours
 *   devgate lab plug NAME KIND [--image FILE] [--ro] [--overlay] [--id ID]   prints the device's id
 *   devgate lab unplug NAME ID|KIND              a kind names the only lab device of that kind
 *   devgate lab wait NAME PATH [--gone] [--timeout S]   until PATH exists (is gone) in the guest
 *
 * `lab up`, `lab down` and `lab list` themselves are in devgate-command.ts; these helpers extend them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Command, Option } from 'commander';
import { Errors } from '@devgate/core';
import {
  DEVICE_KINDS,
  type DeviceSpec,
  isDeviceKind,
  labDownWithGuests,
  labExec,
  labOsUp,
  parseDeviceSpec,
  withLabGuest,
} from '@devgate/guest-lab';
import { readTrustedRegistry } from '@devgate/service';
import { formatColumns } from './format.js';
import { type Io } from './io.js';

interface UpOsOptions {
  domains?: string;
  os?: boolean;
  device?: string[];
  iommu?: boolean;
  memory?: string;
  accel?: 'auto' | 'kvm' | 'tcg';
}

/** The options `lab up` takes for guests with an OS. */
export function addLabUpOsOptions(up: Command): Command {
  return up
    .option('--os', 'start real Linux guests (this host userland, read-only) instead of paused VMs')
    .option(
      '--device <kind[=image[:ro]]>',
      `with --os: a device present from power-on (${DEVICE_KINDS.join(', ')}); repeatable`,
      (value: string, previous: string[] = []) => [...previous, value],
    )
    .option('--iommu', 'with --os: an emulated Intel IOMMU')
    .option('--memory <MiB>', 'with --os: guest memory', '512')
    .addOption(
      new Option('--accel <accel>', 'with --os: accelerator (auto: KVM if it runs a guest)').choices([
        'auto',
        'kvm',
        'tcg',
      ]),
    );
}

/** `lab up --os`: boots the guests, registers them, prints NAME  pid PID  SOCKET  (accel, boot time). */
export async function labUpOs(names: string[], options: UpOsOptions, io: Io): Promise<void> {
  const memoryMb = Number(options.memory ?? '512');
  if (!Number.isInteger(memoryMb) || memoryMb < 128) {
    throw Errors.badOption({ option: '--memory', reason: 'a number of MiB, at least 128' });
  }
  const started = await labOsUp(names, {
    ...registryOf(options),
    devices: (options.device ?? []).map(parseDeviceSpec),
    iommu: options.iommu,
    memoryMb,
    accel: options.accel,
  });
  io.out(
    formatColumns(
      started.map((d) => [d.name, `pid ${d.pid}`, d.socket, `${d.accel}, booted in ${(d.bootMs / 1000).toFixed(1)} s`]),
    ),
  );
}

/** `lab down`: also stops guests with an OS and removes their files. */
export async function labDownAll(names: string[], options: { domains?: string }): Promise<void> {
  await labDownWithGuests(names.length ? names : undefined, registryOf(options));
}

/**
 * The registry a lab command works on, read as devgated and the CLI's other commands read it: it
 * names the processes stopped and the sockets connected to, so one others could write is refused.
 */
export function registryOf(options: { domains?: string }) {
  return { registryFile: options.domains, registryReader: readTrustedRegistry };
}

/** Adds exec, plug, unplug and wait to `lab`. */
export function addLabGuestCommands(lab: Command, io: Io, registry: (command: Command) => Command): void {
  registry(lab.command('exec').description('run a command in a lab guest (started with lab up --os)'))
    .argument('NAME')
    .argument('CMD...', 'the command and its arguments (after --)')
    .action(async (name: string, argv: string[], options: { domains?: string }) => {
      const code = await labExec(name, argv, {
        ...registryOf(options),
        onStdout: (chunk) => io.out(chunk.toString('utf8')),
        onStderr: (chunk) => io.err(chunk.toString('utf8')),
      });
      if (code !== 0) throw Object.assign(new Error(`exit status ${code}`), { exitCode: code, silent: true });
    });

  registry(lab.command('plug').description('plug an emulated device into a lab guest; prints its id'))
    .argument('NAME')
    .argument('KIND', DEVICE_KINDS.join(', '))
    .option('--image <file>', 'usb-storage: the disk image (default: a blank 64 MiB one)')
    .option('--ro', 'usb-storage: read-only')
    .option('--overlay', 'usb-storage: writes go to an overlay; the image stays as it is')
    .option('--id <id>', 'the device id (default: kbd1, stick1, ...)')
    .action(
      async (
        name: string,
        kind: string,
        options: { domains?: string; image?: string; ro?: boolean; overlay?: boolean; id?: string },
      ) => {
        if (!isDeviceKind(kind)) {
          throw Errors.badOption({ option: 'KIND', reason: `'${kind}' is not one of ${DEVICE_KINDS.join(', ')}` });
        }
        const spec: DeviceSpec = {
          kind,
          ...(options.image ? { image: path.resolve(options.image) } : {}),
          ...(options.ro ? { readOnly: true } : {}),
          ...(options.overlay ? { overlay: true } : {}),
          ...(options.id ? { id: options.id } : {}),
        };
        if (spec.image && !fs.existsSync(spec.image)) {
          throw Errors.badOption({ option: '--image', reason: `no such file: ${spec.image}` });
        }
        const id = await withLabGuest(name, registryOf(options), (guest) => guest.plug(spec));
        io.out(`${id}\n`);
      },
    );

  registry(lab.command('unplug').description('pull an emulated device out of a lab guest'))
    .argument('NAME')
    .argument('ID|KIND', 'a device id, or a kind when the guest has one device of it')
    .action(async (name: string, device: string, options: { domains?: string }) => {
      const id = await withLabGuest(name, registryOf(options), (guest) => guest.unplug(device));
      io.out(`${id}\n`);
    });

  registry(lab.command('wait').description('wait until a path exists (or, with --gone, is gone) in a lab guest'))
    .argument('NAME')
    .argument('PATH')
    .option('--gone', 'wait until it is gone')
    .option('--timeout <seconds>', 'give up after this long (exit 1)', '30')
    .action(async (name: string, file: string, options: { domains?: string; gone?: boolean; timeout: string }) => {
      const seconds = Number(options.timeout);
      if (!(seconds > 0)) throw Errors.badOption({ option: '--timeout', reason: 'a positive number of seconds' });
      await withLabGuest(name, registryOf(options), (guest) =>
        guest.waitForPath(file, { exists: !options.gone, timeoutMs: seconds * 1000 }),
      );
    });
}
