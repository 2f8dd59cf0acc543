/**
 * A fake host on disk: writes device records as a directory laid out like `/`, so the real sysfs
 * reader (and lsblk --sysroot, or anything else that reads /sys) can run against recorded
 * hardware. What it writes for each record:
 *
 *  - `sys/devices/<devpath>/`, one file per text attribute (`power/control` makes a subdirectory),
 *    holding the value plus the newline sysfs adds; binary attributes as raw bytes; the record's
 *    sysfs links (umockdev `L:` lines) when they stay inside sys/. Attributes can only be written
 *    for records that list them (`RecordedDevice`, from the recording parsers or built with
 *    `new RecordedDevice(...)`); other records get properties and links only.
 *  - `uevent` with the kernel's properties (see `isKernelProperty`), DEVNAME without `/dev/` as
 *    the kernel writes it.
 *  - the `subsystem` link to `sys/bus/<subsystem>` for buses (usb, pci, scsi, ...), otherwise to
 *    `sys/class/<subsystem>`, and the matching `sys/bus/<s>/devices/<name>` or
 *    `sys/class/<s>/<name>` entry; `sys/block/<name>` for disks; `sys/dev/{block,char}/MAJ:MIN`.
 *  - `run/udev/data/b8:0`, `c189:3` (devices with MAJOR and MINOR) or `+usb:1-1` (others), with
 *    `E:KEY=VALUE` for every property and `S:` for devlinks, as udevd names and writes them.
 *  - an empty regular file `dev/<devname>`.
 *  - `proc/self/mountinfo` and `proc/swaps` from the given usage.
 *
 * Reading it back with `readHostTree(rootsUnder(dir))` gives the same devpaths, subsystems,
 * properties and text attributes, with one difference that comes from the kernel's format:
 * DEVNAME reads back as the uevent file has it (`sda`, not `/dev/sda`). The reader lists only
 * what is under class/block, bus/usb, class/input and bus/pci, plus their ancestors.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type HostTree, type HostUsage, NO_USAGE, type RawDeviceRecord, sysname } from '@devgate/core';
import { type HostRoots, isRecordedDevice, isSafeDevpath, isSafeRelativePath, rootsUnder } from '@devgate/host';

export interface MaterializeOptions {
  /** Mounted devices and swaps for /proc; default: the tree's usage, or nothing. */
  readonly usage?: HostUsage;
}

/** Subsystems the kernel registers as buses (`/sys/bus/<name>`); all others are classes. */
const BUSES = new Set([
  'usb',
  'pci',
  'pci_express',
  'scsi',
  'hid',
  'serio',
  'platform',
  'i2c',
  'spi',
  'acpi',
  'pnp',
  'mmc',
  'sdio',
  'virtio',
  'xen',
  'xen-backend',
  'usb-serial',
  'gameport',
  'cpu',
  'node',
  'memory',
  'container',
  'machinecheck',
  'clockevents',
  'clocksource',
  'event_source',
  'workqueue',
  'hdaudio',
  'snd_seq',
  'ac97',
  'mei',
  'wmi',
  'thunderbolt',
  'typec',
  'serial-base',
  'nd',
  'nvmem',
  'mdio_bus',
  'auxiliary',
  'soc',
  'gpio',
  'ishtp',
  'iio',
  'media',
]);

/** Properties udev itself maintains, never in a kernel uevent file. */
const UDEV_BOOKKEEPING = new Set([
  'DEVPATH',
  'SUBSYSTEM',
  'ACTION',
  'SEQNUM',
  'DEVLINKS',
  'TAGS',
  'CURRENT_TAGS',
  'USEC_INITIALIZED',
]);

/** Namespaces udev rules, builtins and hwdb write into; the kernel uses none of them. */
const UDEV_PREFIXES =
  /^(ID_|DM_|UDISKS_|UDEV_|LIBINPUT_|MTP_|SYSTEMD_|COLORD_|NM_|XKB|KEYBOARD_|EVDEV_|MOUSE_|POINTINGSTICK_|ACCEL_|SOUND_|PULSE_|LVM_|MD_|NVME_HOST|SCSI_|FWUPD_|GPHOTO2_|LIBSANE_|MEMORY_DEVICE_|ADB_|FASTBOOT_|__)/;

/**
 * Whether a property goes into the `uevent` file: an upper-case key (kernel keys all are) that is
 * neither udev bookkeeping nor in a namespace udev writes. Anything else is in the udev database
 * only. The reader merges both, so the rule matters only to code that reads uevent files itself.
 */
export function isKernelProperty(key: string): boolean {
  return /^[A-Z][A-Z0-9_]*$/.test(key) && !UDEV_BOOKKEEPING.has(key) && !UDEV_PREFIXES.test(key);
}

/** Writes a whole host under `dir` (created if missing) and returns its roots. */
export function materializeHost(
  source: Iterable<RawDeviceRecord> | HostTree,
  dir: string,
  options: MaterializeOptions = {},
): HostRoots {
  const tree = isHostTree(source) ? source : undefined;
  const records = tree ? tree.devices() : [...(source as Iterable<RawDeviceRecord>)];
  for (const sub of ['sys/devices', 'sys/class', 'sys/bus', 'sys/block', 'sys/dev/block', 'sys/dev/char']) {
    fs.mkdirSync(path.join(dir, sub), { recursive: true });
  }
  fs.mkdirSync(path.join(dir, 'dev'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'run/udev/data'), { recursive: true });
  writeRecords(dir, records);
  writeUsage(dir, records, options.usage ?? tree?.usage ?? NO_USAGE);
  return rootsUnder(dir);
}

/** Hotplug: adds devices (typically one device and its children) to a materialized host. */
export function addDevice(dir: string, records: RawDeviceRecord | Iterable<RawDeviceRecord>): void {
  writeRecords(dir, isRecord(records) ? [records] : [...records]);
}

/**
 * Hot-unplug: removes a device and everything under it, with its class, bus, block and dev links,
 * udev database entries and device nodes. Returns the removed devpaths, children first.
 */
export function removeDevice(dir: string, devpath: string): string[] {
  if (!isSafeDevpath(devpath)) throw new Error(`not a device path: '${devpath}'`);
  const sys = path.join(dir, 'sys');
  const top = path.join(sys, devpath);
  const removed: string[] = [];
  for (const deviceDir of deviceDirsUnder(top).reverse()) {
    const uevent = readKeyValues(path.join(deviceDir, 'uevent'));
    const subsystem = readlinkBase(path.join(deviceDir, 'subsystem')) ?? '';
    const name = path.basename(deviceDir);
    const { MAJOR: major, MINOR: minor, DEVNAME: devname } = uevent;
    const hasNode = major !== undefined && minor !== undefined;
    const kind = subsystem === 'block' ? 'block' : 'char';
    const candidates = [
      path.join(dir, 'run/udev/data', hasNode ? `${kind[0]}${major}:${minor}` : `+${subsystem}:${name}`),
      ...(hasNode ? [path.join(sys, 'dev', kind, `${major}:${minor}`)] : []),
      ...(devname && isSafeRelativePath(devname) ? [path.join(dir, 'dev', devname)] : []),
      ...(subsystem
        ? [path.join(sys, 'class', subsystem, name), path.join(sys, 'bus', subsystem, 'devices', name)]
        : []),
      ...(subsystem === 'block' ? [path.join(sys, 'block', name)] : []),
    ];
    for (const file of candidates) {
      // Links are removed only when they lead to this device, so a namesake elsewhere survives.
      if (isSymlink(file) && path.resolve(path.dirname(file), fs.readlinkSync(file)) !== deviceDir) continue;
      fs.rmSync(file, { force: true });
    }
    removed.push('/' + path.relative(sys, deviceDir));
  }
  fs.rmSync(top, { recursive: true, force: true });
  return removed;
}

/** The records at `devpath` and below it: the subtree a hotplug adds or removes. */
export function recordsUnder<R extends RawDeviceRecord>(records: Iterable<R>, devpath: string): R[] {
  return [...records].filter((r) => r.devpath === devpath || r.devpath.startsWith(devpath + '/'));
}

function writeRecords(dir: string, all: readonly RawDeviceRecord[]): void {
  const sys = path.join(dir, 'sys');
  // A device listed twice (export-db dumps do that) is written once, the first time, as HostTree keeps it.
  const seen = new Set<string>();
  const records: RawDeviceRecord[] = [];
  for (const record of all) {
    if (seen.has(record.devpath)) continue;
    seen.add(record.devpath);
    records.push(record);
  }
  for (const record of records) {
    if (!isSafeDevpath(record.devpath)) throw new Error(`not a device path: '${record.devpath}'`);
    // '' is allowed (export-db records without SUBSYSTEM): such a device gets no subsystem link.
    if (record.subsystem !== '' && !/^[A-Za-z0-9][A-Za-z0-9_.:+-]*$/.test(record.subsystem)) {
      throw new Error(`${record.devpath}: cannot write subsystem '${record.subsystem}'`);
    }
  }
  // Directories first, so no attribute or link written later can redirect a device directory.
  for (const record of records) fs.mkdirSync(path.join(sys, record.devpath), { recursive: true });
  for (const record of records) writeRecord(dir, record);
}

function writeRecord(dir: string, record: RawDeviceRecord): void {
  const sys = path.join(dir, 'sys');
  const deviceDir = path.join(sys, record.devpath);
  const name = sysname(record.devpath);
  const { properties, subsystem } = record;

  if (isRecordedDevice(record)) {
    for (const [attr, value] of record.attributes) writeAttribute(deviceDir, attr, value + '\n');
    for (const [attr, bytes] of record.binaryAttributes) writeAttribute(deviceDir, attr, bytes);
  }

  const uevent = Object.entries(properties)
    .filter(([key]) => isKernelProperty(key))
    .map(([key, value]) => `${key}=${key === 'DEVNAME' ? value.replace(/^\/dev\//, '') : value}`);
  fs.writeFileSync(path.join(deviceDir, 'uevent'), uevent.map((line) => checkLine(line, record) + '\n').join(''));

  if (subsystem !== '') {
    const isBus = BUSES.has(subsystem);
    const subsystemDir = path.join(sys, isBus ? 'bus' : 'class', subsystem);
    fs.mkdirSync(subsystemDir, { recursive: true });
    symlink(path.join(deviceDir, 'subsystem'), subsystemDir);
    symlink(isBus ? path.join(subsystemDir, 'devices', name) : path.join(subsystemDir, name), deviceDir);
  }
  if (subsystem === 'block' && properties.DEVTYPE === 'disk') symlink(path.join(sys, 'block', name), deviceDir);

  const majMin = majorMinor(record);
  const kernelMajMin = properties.MAJOR !== undefined && properties.MINOR !== undefined;
  const kind = subsystem === 'block' ? 'block' : 'char';
  if (majMin) symlink(path.join(sys, 'dev', kind, majMin), deviceDir);

  // The file name the reader (and udevd) derive: from MAJOR/MINOR in uevent, else subsystem and name.
  const udevId = kernelMajMin ? `${kind[0]}${properties.MAJOR}:${properties.MINOR}` : `+${subsystem}:${name}`;
  const udevLines = [
    ...(isRecordedDevice(record) ? record.devlinks.map((link) => `S:${link}`) : []),
    ...Object.entries(properties).map(([key, value]) => `E:${key}=${value}`),
  ];
  fs.writeFileSync(
    path.join(dir, 'run/udev/data', udevId),
    udevLines.map((line) => checkLine(line, record) + '\n').join(''),
  );

  const devname = properties.DEVNAME?.replace(/^\/dev\//, '');
  if (devname && isSafeRelativePath(devname)) {
    const node = path.join(dir, 'dev', devname);
    fs.mkdirSync(path.dirname(node), { recursive: true });
    if (!fs.existsSync(node)) makeNode(node, devname, record.subsystem, majMin);
  }

  if (isRecordedDevice(record)) {
    for (const [link, target] of record.links) {
      // Only links that stay inside sys/, as in a real sysfs; others are left out.
      const resolved = path.resolve(path.dirname(path.join(deviceDir, link)), target);
      if (!isSafeRelativePath(link) || !resolved.startsWith(sys + path.sep)) continue;
      const at = path.join(deviceDir, link);
      fs.mkdirSync(path.dirname(at), { recursive: true });
      if (!exists(at)) fs.symlinkSync(target, at);
    }
  }
}

function writeAttribute(deviceDir: string, name: string, content: string | Uint8Array): void {
  if (!isSafeRelativePath(name) || name === 'uevent' || name === 'subsystem') {
    throw new Error(`cannot write attribute '${name}'`);
  }
  const file = path.join(deviceDir, name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content);
}

function writeUsage(dir: string, records: readonly RawDeviceRecord[], usage: HostUsage): void {
  const procSelf = path.join(dir, 'proc/self');
  fs.mkdirSync(procSelf, { recursive: true });
  const devnames = new Map(records.map((r) => [majorMinor(r), r.properties.DEVNAME] as const));
  const mounts = [...usage.mounted].map((majMin, i) => {
    const source = devnames.get(majMin) ?? `/dev/block/${majMin}`;
    return `${100 + i} 1 ${majMin} / /mnt/devgate${i} rw,relatime shared:${i + 1} - ext4 ${source} rw\n`;
  });
  fs.writeFileSync(path.join(procSelf, 'mountinfo'), mounts.join(''));
  const swaps = [...usage.swaps].map((node) => `${node.replace(/ /g, '\\040')}\tpartition\t1048572\t0\t-2\n`);
  fs.writeFileSync(path.join(dir, 'proc/swaps'), 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n' + swaps.join(''));
}

function majorMinor(record: RawDeviceRecord): string | undefined {
  const { MAJOR, MINOR } = record.properties;
  const dev = MAJOR !== undefined && MINOR !== undefined ? `${MAJOR}:${MINOR}` : record.attribute('dev');
  return dev !== undefined && /^\d+:\d+$/.test(dev) ? dev : undefined;
}

/** uevent and udev database files are line-based: a value with a newline cannot be written. */
function checkLine(line: string, record: RawDeviceRecord): string {
  if (/[\n\r]/.test(line)) throw new Error(`${record.devpath}: property with a line break: ${JSON.stringify(line)}`);
  return line;
}

/** A relative link, as sysfs has; an existing entry is kept (first device wins, as in HostTree). */
function symlink(at: string, target: string): void {
  fs.mkdirSync(path.dirname(at), { recursive: true });
  if (!exists(at)) fs.symlinkSync(path.relative(path.dirname(at), target), at);
}

/** Device directories (holding `uevent`) at and under `top`, parents first; links are not followed. */
function deviceDirsUnder(top: string): string[] {
  const found: string[] = [];
  const walk = (dir: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    if (entries.some((e) => e.name === 'uevent' && e.isFile())) found.push(dir);
    for (const entry of entries) if (entry.isDirectory()) walk(path.join(dir, entry.name));
  };
  walk(top);
  return found;
}

function readKeyValues(file: string): Record<string, string> {
  const result: Record<string, string> = {};
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return result;
  }
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) result[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return result;
}

function readlinkBase(file: string): string | undefined {
  try {
    return path.basename(fs.readlinkSync(file));
  } catch {
    return undefined;
  }
}

function isHostTree(source: Iterable<RawDeviceRecord> | HostTree): source is HostTree {
  return typeof (source as HostTree).devices === 'function' && typeof (source as HostTree).parent === 'function';
}

function isRecord(value: RawDeviceRecord | Iterable<RawDeviceRecord>): value is RawDeviceRecord {
  return typeof (value as RawDeviceRecord).devpath === 'string';
}

function exists(file: string): boolean {
  try {
    fs.lstatSync(file);
    return true;
  } catch {
    return false;
  }
}

function isSymlink(file: string): boolean {
  try {
    return fs.lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}

/**
 * A device node as devtmpfs would make it: the real block node when this host has that very device
 * (same major:minor, same name) and we may create nodes, so attaching from the tree reaches it, as
 * the data path's major:minor check demands; an empty file otherwise (a recorded machine's disk).
 */
function makeNode(node: string, devname: string, subsystem: string, majMin: string | undefined): void {
  let real: string | undefined;
  try {
    if (majMin && subsystem === 'block') real = path.basename(fs.readlinkSync(`/sys/dev/block/${majMin}`));
  } catch {
    // Not a device of this host.
  }
  if (real === path.basename(devname) && process.getuid?.() === 0) {
    const [major, minor] = majMin!.split(':');
    execFileSync('mknod', [node, 'b', major, minor]);
    return;
  }
  fs.writeFileSync(node, '');
}
