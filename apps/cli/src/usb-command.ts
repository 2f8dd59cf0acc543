/**
 * `devgate usb ...`: USB authorization on the local host (or a tree laid out like `/`), USBGuard's
 * command line in devgate's words:
 *
 *   devgate usb allow|block|reject [-p --rules FILE] [--sysroot DIR] DEVICE
 *   devgate usb generate-policy [--sysroot DIR | --recording FILE] [-t TARGET] [-X]
 *   devgate usb rules check FILE
 *
 * DEVICE is `BACKEND:BUSID` or a busid (`1-1.4`, or `usbN` for a root hub). allow/block/reject write
 * the device's sysfs `authorized` (or `remove`) at once, as usbguard-daemon would; `-p` also appends
 * a rule that pins the device to the rules file, like `usbguard allow-device -p`.
 */
import * as fs from 'node:fs';
import { type Command, Option } from 'commander';
import { Errors } from '@devgate/core';
import { type HostRoots, LOCAL_ROOTS, LocalHostSource, loadRecording, rootsUnder } from '@devgate/host';
import {
  type PolicyTarget,
  authorizeUsbDevice,
  checkRules,
  deviceRule,
  formatRule,
  generatePolicy,
  parseRule,
  sysfsAttributeBytes,
  usbGuardDevices,
} from '@devgate/driver-usb';
import { type Io } from './io.js';

const TARGETS = ['allow', 'block', 'reject'] as const;
const PORT = /^(\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}|usb\d{1,3})$/;

interface DeviceOptions {
  readonly permanent?: boolean;
  readonly rules?: string;
  readonly sysroot?: string;
  readonly backend: string;
}

interface GenerateOptions {
  readonly sysroot?: string;
  readonly recording?: string;
  readonly target: PolicyTarget;
  readonly hashes: boolean;
}

/** Adds USB authorization's subcommands to `usb` (the caller wires `usb` into `devgate`). */
export function addUsbAuthorizationCommands(usb: Command, io: Io): void {
  for (const target of TARGETS) {
    usb
      .command(target)
      .description(
        `${verb(target)} a USB device on this host now (sysfs ${target === 'reject' ? 'remove' : 'authorized'})`,
      )
      .argument('DEVICE', 'BACKEND:BUSID or BUSID (1-1.4, or usbN for a root hub)')
      .option('-p, --permanent', 'also append a rule for this device to the rules file (--rules)')
      .option('--rules <file>', 'the rules file -p appends to')
      .option('--sysroot <dir>', 'act on sys/ under DIR instead of /sys')
      .addOption(new Option('--backend <name>', 'the name of this host as a backend domain').default('dom0'))
      .action((device: string, options: DeviceOptions) => authorize(target, device, options, io));
  }

  usb
    .command('generate-policy')
    .description('print one rule per USB device present, as usbguard generate-policy does')
    .option('--sysroot <dir>', 'read sys/ (and run/udev/) under DIR instead of /')
    .addOption(
      new Option('--recording <file>', 'read a recorded host (umockdev, udevadm export-db, sysfs tarball)').conflicts(
        'sysroot',
      ),
    )
    .addOption(new Option('-t, --target <target>', 'the target of every rule').choices([...TARGETS]).default('allow'))
    .option('-X, --no-hashes', 'leave hash and parent-hash out')
    .action((options: GenerateOptions) => generate(options, io));

  usb
    .command('rules')
    .description('work with USBGuard rules files')
    .command('check')
    .description('check a rules file: every error as FILE:LINE:COLUMN: message; exit 1 if there is any')
    .argument('FILE')
    .action((file: string) => check(file, io));
}

function verb(target: PolicyTarget): string {
  return { allow: 'authorize', block: 'deauthorize', reject: 'remove' }[target];
}

function authorize(target: PolicyTarget, arg: string, options: DeviceOptions, io: Io): void {
  if (options.permanent && !options.rules) {
    throw Errors.badOption({ option: '-p', reason: 'needs --rules FILE, the rules file to append the rule to' });
  }
  const colon = arg.indexOf(':');
  const backend = colon >= 0 ? arg.slice(0, colon) : options.backend;
  const port = colon >= 0 ? arg.slice(colon + 1) : arg;
  if (!PORT.test(port)) throw Errors.badDeviceArgument({ arg });
  if (backend !== options.backend) throw Errors.noSuchBackend({ backend });

  const roots: HostRoots = options.sysroot ? rootsUnder(options.sysroot) : LOCAL_ROOTS;
  const tree = new LocalHostSource({ roots, backend, hotplug: 'static', probeBlock: false }).snapshot();
  const entries = usbGuardDevices(tree, { bytes: sysfsAttributeBytes(roots.sys) });
  const entry = entries.find((e) => e.port === port);
  if (!entry) {
    const suggestion = entries.find((e) => e.port.startsWith(port) || port.startsWith(e.port))?.port;
    throw Errors.unknownDevice({
      backend,
      devclass: 'usb',
      port,
      suggestion: suggestion && `${backend}:${suggestion}`,
    });
  }

  authorizeUsbDevice(roots.sys, entry.devpath, target);
  io.notice(`${backend}:${port}: ${target === 'allow' ? 'allowed' : target === 'block' ? 'blocked' : 'rejected'}\n`);

  if (options.permanent && options.rules) {
    const line = formatRule(deviceRule(entry, { target }));
    parseRule(line); // what is appended must read back: it always does, and this keeps it so
    appendRule(options.rules, line);
    io.notice(`appended to ${options.rules}: ${line}\n`);
  }
}

/** Appends one line, starting a new line if the file does not end with one; a new file is 0600. */
function appendRule(file: string, line: string): void {
  try {
    let prefix = '';
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_APPEND, 0o600);
    try {
      const size = fs.fstatSync(fd).size;
      if (size > 0) {
        const last = Buffer.alloc(1);
        fs.readSync(fd, last, 0, 1, size - 1);
        if (last[0] !== 0x0a) prefix = '\n';
      }
      fs.writeSync(fd, `${prefix}${line}\n`);
    } finally {
      fs.closeSync(fd);
    }
  } catch (error) {
    throw Errors.rulesWriteFailed({ file, reason: (error as NodeJS.ErrnoException).code ?? String(error) });
  }
}

function generate(options: GenerateOptions, io: Io): void {
  const policyOptions = { target: options.target, withHashes: options.hashes };
  if (options.recording) {
    const recording = loadRecording(options.recording);
    try {
      io.out(generatePolicy(recording.tree, policyOptions));
    } finally {
      recording.dispose();
    }
    return;
  }
  const roots = options.sysroot ? rootsUnder(options.sysroot) : LOCAL_ROOTS;
  const tree = new LocalHostSource({ roots, hotplug: 'static', probeBlock: false }).snapshot();
  io.out(generatePolicy(tree, { ...policyOptions, bytes: sysfsAttributeBytes(roots.sys) }));
}

function check(file: string, io: Io): void {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw Errors.rulesUnreadable({ file, reason: (error as NodeJS.ErrnoException).code ?? String(error) });
  }
  const { rules, errors } = checkRules(text, file);
  for (const issue of errors) io.err(`${issue.file}:${issue.line}:${issue.column}: ${issue.message}\n`);
  if (errors.length > 0) throw Errors.rulesInvalid({ file, count: errors.length });
  io.notice(`${file}: ${rules.length} rule${rules.length === 1 ? '' : 's'}, no errors\n`);
}
