import * as fs from 'node:fs';
import * as path from 'node:path';
import { Errors, HostTree, type HostUsage, type RawDeviceRecord, type SysfsReader } from '@devgate/core';
import { parseKeyValueLines, parseMountinfo, parseSwaps, parseUdevDataFile } from './parse-udev-data.js';
import { type DerivedDevice, isTrimmedBlockTree, trimmedAncestor, trimmedBlockDevices } from './trimmed-sysfs.js';

/** Where a host's trees are. Every path is configurable so tests and `--sysroot` can redirect it. */
export interface HostRoots {
  readonly sys: string;
  readonly dev: string;
  readonly proc: string;
  /** udev's database directory (`/run/udev/data`); absent on hosts without udevd, '' for none. */
  readonly udevData: string;
}

export const LOCAL_ROOTS: HostRoots = { sys: '/sys', dev: '/dev', proc: '/proc', udevData: '/run/udev/data' };

/** The roots under a directory laid out like `/`, as lsblk's `--sysroot` reads them. */
export function rootsUnder(dir: string): HostRoots {
  return {
    sys: path.join(dir, 'sys'),
    dev: path.join(dir, 'dev'),
    proc: path.join(dir, 'proc'),
    udevData: path.join(dir, 'run/udev/data'),
  };
}

/**
 * The class and bus directories whose members are devices the drivers care about. A tree without
 * class/block is read as an lsblk --sysroot dump (trimmed-sysfs.ts): block devices from block/ and
 * dev/block/.
 */
const DEVICE_LISTS = ['class/block', 'bus/usb/devices', 'class/input', 'bus/pci/devices'];

const MAX_ATTRIBUTE_BYTES = 64 * 1024;
/** mountinfo of a host with thousands of mounts (containers) runs to megabytes. */
const MAX_USAGE_BYTES = 16 * 1024 * 1024;
/**
 * One buffer for every attribute read: reads are synchronous and decoded at once, so it is never
 * shared by two reads. A fresh 64 KiB buffer per read (zeroed) was most of what a burst of new
 * partitions cost (ADR 0015).
 */
const attributeBuffer = Buffer.allocUnsafe(MAX_ATTRIBUTE_BYTES);

/** The class and bus directories of other subsystems drivers asked for (`tty`: class/tty). */
export function subsystemLists(subsystems: readonly string[]): string[] {
  return subsystems.filter((s) => /^[a-z0-9_-]{1,32}$/.test(s)).flatMap((s) => [`class/${s}`, `bus/${s}/devices`]);
}

/**
 * Reads a host's devices from sysfs: every device listed under the class and bus directories above
 * (and those of `subsystems`, which drivers asked for), plus all of their ancestors. Attributes are
 * read lazily, on first use.
 */
export function readHostTree(roots: HostRoots, subsystems: readonly string[] = []): HostTree {
  const devicesDir = realpathOrUndefined(path.join(roots.sys, 'devices'));
  if (!devicesDir || !isDirectory(devicesDir)) {
    throw Errors.sysrootUnreadable({ root: roots.sys, reason: 'no devices/ directory' });
  }
  const listed: string[] = [];
  // A class or bus directory's members are of its subsystem (`class/block`, `bus/usb/devices`): their
  // `subsystem` links need not be read.
  const subsystemOf = new Map<string, string>();
  for (const list of [...DEVICE_LISTS, ...subsystemLists(subsystems)]) {
    const listDir = realpathOrUndefined(path.join(roots.sys, list));
    if (!listDir) continue;
    for (const entry of readdirOrEmpty(listDir)) {
      const real = deviceDirOf(listDir, entry, devicesDir);
      if (!real) continue;
      listed.push(real);
      subsystemOf.set(real, list.split('/')[1]);
    }
  }
  // An lsblk --sysroot dump: block devices only in block/ and dev/block/, and no uevent files.
  const derived = new Map<string, DerivedDevice>();
  const trimmed = isTrimmedBlockTree(roots.sys);
  if (trimmed) {
    for (const [dir, device] of trimmedBlockDevices(roots.sys, devicesDir)) {
      listed.push(dir);
      derived.set(dir, device);
    }
  }
  const devpaths = new Map<string, { uevent?: string; derived?: DerivedDevice; subsystem?: string }>();
  // Directories looked at, devices or not (`virtual/block`): each is looked at once, and so are
  // its ancestors, so a walk up stops at the first one seen.
  const seen = new Set<string>();
  for (const real of listed) {
    if (!real.startsWith(devicesDir + '/')) continue;
    // Include every ancestor, so drivers can walk up to USB and PCI parents.
    for (let dir = real; dir.length > devicesDir.length; dir = path.dirname(dir)) {
      const devpath = '/devices' + dir.slice(devicesDir.length);
      if (seen.has(devpath)) break;
      seen.add(devpath);
      // A device directory is one with a uevent file: read now, not looked for and then read.
      const uevent = readIfPresent(path.join(dir, 'uevent'));
      const device = trimmed
        ? (derived.get(dir) ?? (uevent !== undefined ? undefined : trimmedAncestor(dir)))
        : undefined;
      if (uevent !== undefined || device)
        devpaths.set(devpath, { uevent, derived: device, subsystem: subsystemOf.get(dir) });
    }
  }
  const records: RawDeviceRecord[] = [];
  for (const [devpath, source] of devpaths) records.push(sysfsRecord(roots, devpath, source));
  return new HostTree(records, readUsage(roots));
}

/** Subsystems whose devices the tree holds (the lists above), for incremental updates. */
export const LISTED_SUBSYSTEMS = new Set(['block', 'usb', 'input', 'pci']);

/**
 * One device, read again after a uevent, with those of its ancestors `known` does not have yet:
 * an update of one device instead of a rescan of the whole tree. `udevDatabase: false` leaves
 * udev's database entry of the device itself unread: after the kernel's `add`, before udevd has
 * processed it, the entry under its major:minor can only be a removed device's (stale labels).
 * `udevFollows` (default: as `udevDatabase: false`) says a kernel event was read that udevd has
 * yet to process: where udevd runs, its findings come with its own event (see `awaitsUdev`).
 */
export function readDeviceWithAncestors(
  roots: HostRoots,
  devpath: string,
  known: (devpath: string) => boolean,
  fromUevent?: Record<string, string>,
  {
    udevDatabase = true,
    udevFollows = !udevDatabase,
    sameEvent,
  }: {
    readonly udevDatabase?: boolean;
    readonly udevFollows?: boolean;
    /** The device's record read from the kernel's side of this same event: what it read of sysfs stands. */
    readonly sameEvent?: RawDeviceRecord;
  } = {},
): RawDeviceRecord[] {
  if (!devpath.startsWith('/devices/') || devpath.split('/').includes('..')) return [];
  const records: RawDeviceRecord[] = [];
  for (let at = devpath; at.length > '/devices'.length; at = path.posix.dirname(at)) {
    if (at !== devpath && known(at)) break;
    if (at === devpath && fromUevent)
      records.push(sysfsRecord(roots, at, { fromUevent, udevDatabase, udevFollows, sameEvent }));
    else {
      const uevent = readIfPresent(path.join(roots.sys, at, 'uevent'));
      if (uevent !== undefined) records.push(sysfsRecord(roots, at, { uevent }));
    }
  }
  return records;
}

/** Whether udevd keeps a database here; checked once a second rather than once per device. */
const udevDatabaseSeen = new Map<string, { at: number; present: boolean }>();
function hasUdevDatabase(roots: HostRoots): boolean {
  const now = Date.now();
  const known = udevDatabaseSeen.get(roots.udevData);
  if (known && now - known.at < 1000) return known.present;
  const present = isDirectory(roots.udevData);
  udevDatabaseSeen.set(roots.udevData, { at: now, present });
  return present;
}

export function readUsage(roots: HostRoots): HostUsage {
  return parseUsage(readUsageFiles(roots), roots);
}

/** The files that say which block devices the host uses, as read: mounting makes no uevent, so they are compared. */
export interface UsageFiles {
  readonly mountinfo: string;
  readonly swaps: string;
}

export function readUsageFiles(roots: HostRoots): UsageFiles {
  return {
    mountinfo: readOrEmpty(path.join(roots.proc, 'self/mountinfo'), MAX_USAGE_BYTES),
    swaps: readOrEmpty(path.join(roots.proc, 'swaps'), MAX_USAGE_BYTES),
  };
}

export function parseUsage(files: UsageFiles, roots: HostRoots): HostUsage {
  const deviceOf = (source: string) => blockDeviceNumber(path.join(roots.dev, source.slice('/dev/'.length)));
  return { mounted: parseMountinfo(files.mountinfo, deviceOf), swaps: parseSwaps(files.swaps) };
}

/** The `major:minor` of a block device node (glibc's encoding of dev_t), or undefined for anything else. */
function blockDeviceNumber(node: string): string | undefined {
  try {
    const stat = fs.statSync(node, { bigint: true });
    if (!stat.isBlockDevice()) return undefined;
    const major = ((stat.rdev >> 8n) & 0xfffn) | ((stat.rdev >> 32n) & ~0xfffn);
    const minor = (stat.rdev & 0xffn) | ((stat.rdev >> 12n) & ~0xffn);
    return `${major}:${minor}`;
  } catch {
    return undefined;
  }
}

/** What is known of a device directory before it is read (see readDeviceWithAncestors). */
interface RecordSource {
  /** Its uevent file, read already. */
  readonly uevent?: string;
  /** The properties a uevent just delivered for it: its uevent file's, which need not be read again. */
  readonly fromUevent?: Record<string, string>;
  /** A trimmed dump's device (trimmed-sysfs.ts). */
  readonly derived?: DerivedDevice;
  /** Its subsystem, from the class or bus directory it is listed in. */
  readonly subsystem?: string;
  readonly udevDatabase?: boolean;
  readonly udevFollows?: boolean;
  readonly sameEvent?: RawDeviceRecord;
}

/** One device directory: sysfs reads are what a burst and a cold listing cost, so none is made twice. */
function sysfsRecord(
  roots: HostRoots,
  devpath: string,
  {
    uevent,
    fromUevent,
    derived,
    subsystem: listedAs,
    udevDatabase = true,
    udevFollows = false,
    sameEvent,
  }: RecordSource = {},
): RawDeviceRecord {
  const dir = path.join(roots.sys, devpath);
  let properties: Record<string, string>;
  let subsystem: string;
  if (derived) {
    // A trimmed dump's device: what the kernel would have written (see trimmed-sysfs.ts), under
    // whatever the dump kept of its uevent file and subsystem link.
    properties = { ...derived.properties, ...parseKeyValueLines(uevent ?? readOrEmpty(path.join(dir, 'uevent'))) };
    const subsystemLink = readlinkOrUndefined(path.join(dir, 'subsystem'));
    subsystem = subsystemLink ? path.basename(subsystemLink) : (properties.SUBSYSTEM ?? derived.subsystem);
  } else if (fromUevent?.SUBSYSTEM) {
    // What the uevent file holds: the event's own fields (ACTION, SEQNUM, DEVPATH) are not in it.
    properties = Object.fromEntries(
      Object.entries(fromUevent).filter(([key]) => key !== 'ACTION' && key !== 'SEQNUM' && key !== 'DEVPATH'),
    );
    subsystem = fromUevent.SUBSYSTEM;
  } else {
    properties = parseKeyValueLines(uevent ?? readOrEmpty(path.join(dir, 'uevent')));
    const subsystemLink = listedAs === undefined ? readlinkOrUndefined(path.join(dir, 'subsystem')) : undefined;
    subsystem = listedAs ?? (subsystemLink ? path.basename(subsystemLink) : (properties.SUBSYSTEM ?? ''));
  }
  // The kernel writes DEVNAME relative to /dev; udev (and so every recording) writes it absolute.
  if (properties.DEVNAME && !properties.DEVNAME.startsWith('/')) properties.DEVNAME = `/dev/${properties.DEVNAME}`;
  const udevRuns = hasUdevDatabase(roots);
  const udev = udevDatabase && udevRuns ? readUdevData(roots, subsystem, properties, path.basename(devpath)) : {};
  // What was read of the device directory, once per record (keys: `a` attributes, `e` listings, `l`
  // links): a device's record is read again when a uevent says it changed, and every full rescan
  // starts afresh. One map, made on the first read: most records are never asked anything.
  //
  // For udev's event of a device the kernel's event of it was just read for (same SEQNUM), the map
  // starts as that record's: the same directory, read a moment ago, is not read again (a burst of
  // partitions is when sysfs reads are slowest: the kernel and udevd's workers hold its locks).
  const inherited = sameEvent ? readCaches.get(sameEvent) : undefined;
  let read: Map<string, string | string[] | undefined> | undefined = inherited ? new Map(inherited) : undefined;
  const once = <T extends string | string[] | undefined>(key: string, load: () => T): T => {
    if (!read) readCaches.set(record, (read = new Map()));
    if (read.has(key)) return read.get(key) as T;
    const value = load();
    read.set(key, value);
    return value;
  };
  const record: RawDeviceRecord = {
    devpath,
    subsystem,
    properties: { ...udev, ...properties, SUBSYSTEM: subsystem },
    attribute: (name) => once(`a${name}`, () => readAttribute(dir, name)),
    entries: (name) =>
      once(`e${name}`, () => {
        const sub = safeJoin(dir, name);
        return sub ? readdirOrUndefined(sub) : undefined;
      }),
    // The driver and IOMMU group links change only with a uevent (bind, unbind), which reads the
    // record again.
    link: (name) =>
      once(`l${name}`, () => {
        const file = safeJoin(dir, name);
        return file ? readlinkOrUndefined(file) : undefined;
      }),
  };
  if (udevFollows && udevRuns) awaitingUdev.add(record);
  if (read) readCaches.set(record, read);
  return record;
}

/** What each record read of its device directory (see sysfsRecord). */
const readCaches = new WeakMap<RawDeviceRecord, Map<string, string | string[] | undefined>>();

/** Records read before udevd processed their device (a kernel `add`): udev's own event follows. */
const awaitingUdev = new WeakSet<RawDeviceRecord>();

/**
 * Whether this record was read from a kernel `add` on a host where udevd runs, before udevd had
 * processed the device: udev's findings (labels, filesystem) come with its own event a moment later.
 */
export function awaitsUdev(record: RawDeviceRecord): boolean {
  return awaitingUdev.has(record);
}

/**
 * What devgate provides to drivers as the `SysfsReader` token: this host's sysfs read now, bounded,
 * never outside the root (a devpath must be `/devices/...`, no `..`).
 */
export function sysfsReader(roots: HostRoots): SysfsReader {
  const safe = (relative: string) => relative.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
  return {
    root: roots.sys,
    attribute(devpath, name) {
      if (!devpath.startsWith('/devices/') || !safe(devpath.slice(1)) || !safe(name)) return undefined;
      return readAttribute(path.join(roots.sys, devpath), name);
    },
    entries(dir) {
      return safe(dir) ? readdirOrEmpty(path.join(roots.sys, dir)).sort() : [];
    },
  };
}

/** udev names its database files `b8:1` / `c189:3` for device nodes and `+usb:1-1:1.0` otherwise. */
function readUdevData(
  roots: HostRoots,
  subsystem: string,
  properties: Record<string, string>,
  name: string,
): Record<string, string> {
  const id =
    properties.MAJOR !== undefined && properties.MINOR !== undefined
      ? `${subsystem === 'block' ? 'b' : 'c'}${properties.MAJOR}:${properties.MINOR}`
      : `+${subsystem}:${name}`;
  return parseUdevDataFile(readOrEmpty(path.join(roots.udevData, id)));
}

function readAttribute(dir: string, name: string): string | undefined {
  const file = safeJoin(dir, name);
  if (!file) return undefined;
  try {
    const fd = openRegular(file);
    if (fd === undefined) return undefined;
    try {
      const n = fs.readSync(fd, attributeBuffer, 0, MAX_ATTRIBUTE_BYTES, 0);
      return attributeBuffer.toString('utf8', 0, n).replace(/\n$/, '');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

const OPEN_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY;

/**
 * The running kernel's sysfs and procfs, and udevd's database: nobody but the kernel, or root, puts
 * a file there, and none of them is a FIFO or a device node.
 */
const KERNEL_FILES = [`${LOCAL_ROOTS.sys}/`, `${LOCAL_ROOTS.proc}/`, `${LOCAL_ROOTS.udevData}/`];

/**
 * A descriptor of `file` if it is a regular file (sysfs attributes and procfs files are: S_IFREG,
 * size 4096 or 0), else undefined. A `--sysroot` tree is anyone's: O_NONBLOCK keeps a FIFO's open
 * from waiting for a writer, and nothing but a regular file is read, so a device node cannot feed
 * the reader without end. One fstat, no stat before the open, and none for the kernel's own files:
 * these reads are a burst's and a cold listing's cost (ADR 0014, 0015).
 */
function openRegular(file: string): number | undefined {
  const fd = fs.openSync(file, OPEN_FLAGS);
  if (KERNEL_FILES.some((prefix) => file.startsWith(prefix))) return fd;
  try {
    if (fs.fstatSync(fd).isFile()) return fd;
  } catch {
    // closed below
  }
  fs.closeSync(fd);
  return undefined;
}

/** Attribute names come from drivers; never let one escape the device directory. */
function safeJoin(dir: string, name: string): string | undefined {
  if (name.split('/').some((part) => part === '..' || part === '')) return undefined;
  return path.join(dir, name);
}

/** A whole file, up to `limit` bytes, or '' for none or anything but a regular file. */
function readOrEmpty(file: string, limit = MAX_ATTRIBUTE_BYTES): string {
  return readIfPresent(file, limit) ?? '';
}

/**
 * A whole file, up to `limit` bytes (counted as read: procfs files report size 0); '' for anything
 * but a regular file, undefined for none.
 */
function readIfPresent(file: string, limit = MAX_ATTRIBUTE_BYTES): string | undefined {
  let fd: number | undefined;
  try {
    fd = openRegular(file);
  } catch {
    return undefined;
  }
  if (fd === undefined) return ''; // there, but not a regular file: nothing is read of it
  try {
    // Most files fit the shared buffer; a longer one (mountinfo) is kept in copies of it.
    const chunks: Buffer[] = [];
    let used = 0;
    for (let total = 0; total < limit;) {
      if (used === attributeBuffer.length) {
        chunks.push(Buffer.from(attributeBuffer));
        used = 0;
      }
      const n = fs.readSync(fd, attributeBuffer, used, Math.min(attributeBuffer.length - used, limit - total), null);
      if (n === 0) break;
      used += n;
      total += n;
    }
    if (chunks.length === 0) return attributeBuffer.toString('utf8', 0, used);
    return Buffer.concat([...chunks, attributeBuffer.subarray(0, used)]).toString('utf8');
  } catch {
    return ''; // there, but unreadable (an attribute whose driver refuses reads)
  } finally {
    fs.closeSync(fd);
  }
}

/** A directory's entries; undefined for none there (or not a directory), in one call. */
function readdirOrUndefined(dir: string): string[] | undefined {
  try {
    return fs.readdirSync(dir);
  } catch {
    return undefined;
  }
}

function readdirOrEmpty(dir: string): string[] {
  return readdirOrUndefined(dir) ?? [];
}

/**
 * The device directory a class or bus entry links to. Sysfs links point straight at a real device
 * directory (`../../devices/...`), so one readlink says it; realpath(3) would readlink every
 * component on the way (3,500 calls in a cold listing of 258 block devices). A link that leads
 * elsewhere (a recorded tree built otherwise) is resolved in full.
 */
function deviceDirOf(listDir: string, entry: string, devicesDir: string): string | undefined {
  const file = path.join(listDir, entry);
  const link = readlinkOrUndefined(file);
  const target = link === undefined ? undefined : path.resolve(listDir, link);
  return target?.startsWith(devicesDir + '/') ? target : realpathOrUndefined(file);
}

/**
 * realpath(3), one call for the whole path: fs.realpathSync walks it in JavaScript, an lstat for each
 * component, which was a tenth of a cold listing's time (ADR 0014).
 */
function realpathOrUndefined(file: string): string | undefined {
  try {
    return fs.realpathSync.native(file);
  } catch {
    return undefined;
  }
}

function readlinkOrUndefined(file: string): string | undefined {
  try {
    return fs.readlinkSync(file);
  } catch {
    return undefined;
  }
}

function isDirectory(file: string): boolean {
  try {
    return fs.statSync(file).isDirectory();
  } catch {
    return false;
  }
}
