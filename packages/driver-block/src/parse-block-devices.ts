/**
 * Block devices of one backend, from its host tree. This is the boundary where the block class's
 * untrusted strings (udev properties, sysfs attributes) are sanitized.
 */
import {
  compareNatural,
  type DeviceInfo,
  type HostTree,
  type Port,
  type RawDeviceRecord,
  decodeUdevEscapes,
  inUseBy,
  portLabel,
  sanitizeText,
  sysname,
  trusted,
  usbDeviceId,
  usbPlacement,
} from '@devgate/core';

/** Qubes' port-name rule; names that fail it are not offered. */
const PORT_NAME = /^[a-z0-9-]{1,12}$/;
/** Never exported: compressed RAM, RAM disks, and Xen frontends (a VM's own received disks). */
const SKIPPED = /^(zram|ram)\d+$/;
const XEN_FRONTEND_MAJOR = '202';
/** Partitions that make their disk busy when they are busy, and disks that make their partitions busy. */
const BUSY_REASONS = /^(mounted|swap|open$|in use by|partition \S+ is in use|disk \S+ is in use)/;

export const BLOCK_INTERFACES = ['b******'];

interface Parsed {
  readonly record: RawDeviceRecord;
  readonly name: string;
  readonly isPartition: boolean;
  readonly disk?: RawDeviceRecord;
  hidden?: string;
}

export function parseBlockDevices(tree: HostTree, backend: string): DeviceInfo[] {
  const parsed: Parsed[] = [];
  let partitions = 0;
  for (const record of tree.devices('block')) {
    const known = factsOf(record);
    if (!known.offered) continue;
    const disk = known.isPartition ? tree.parent(record) : undefined;
    if (known.isPartition) partitions++;
    parsed.push({
      record,
      name: known.name,
      isPartition: known.isPartition,
      disk,
      hidden: hiddenReason(tree, known, disk),
    });
  }
  // Attached loop devices and their files, read once for both looks at what loop devices share.
  const loops: AttachedLoop[] = [];
  for (const entry of parsed) {
    const file = entry.isPartition ? undefined : loopBackingFile(entry.record, entry.name);
    if (file) loops.push({ entry, file });
  }
  markLoopBackings(parsed, loops);
  // A disk is one resource with its partitions. While the disk itself is busy (a hybrid ISO mounted
  // whole, a disk held by multipath or dm-crypt), every partition is too: each is a slice of it.
  // Read before the pass below, which marks a disk busy for its partition, not for its siblings.
  const busyDisks = new Set<RawDeviceRecord>();
  for (const p of parsed) if (!p.isPartition && p.hidden && BUSY_REASONS.test(p.hidden)) busyDisks.add(p.record);
  if (busyDisks.size > 0) {
    for (const p of parsed) {
      if (p.disk && !p.hidden && busyDisks.has(p.disk)) p.hidden = `disk ${kernelName(p.disk)} is in use`;
    }
  }
  // While one partition is busy, the disk is too.
  // (One pass over the partitions: a disk with 256 of them is not searched once per disk.)
  const busyPartition = new Map<RawDeviceRecord, string>();
  for (const p of parsed) {
    if (p.disk && p.hidden && !busyPartition.has(p.disk) && BUSY_REASONS.test(p.hidden))
      busyPartition.set(p.disk, p.name);
  }
  for (const entry of parsed) {
    if (entry.hidden || entry.isPartition) continue;
    const busy = busyPartition.get(entry.record);
    if (busy) entry.hidden = `partition ${busy} is in use`;
  }
  markSharedBackingFiles(parsed, loops);
  // Disks first, then partitions (a partition's id is its disk's and its number), each in tree order.
  const ids = new Map<RawDeviceRecord, string>();
  const result: DeviceInfo[] = [];
  for (const entry of parsed) if (!entry.isPartition) result.push(memoized(tree, backend, entry, ids));
  if (partitions > 0)
    for (const entry of parsed) if (entry.isPartition) result.push(memoized(tree, backend, entry, ids));
  return result;
}

interface AttachedLoop {
  readonly entry: Parsed;
  readonly file: string;
}

/** The file behind an attached loop device; undefined for any other device, and a detached loop (size 0). */
function loopBackingFile(record: RawDeviceRecord, name: string): string | undefined {
  return /^loop\d+$/.test(name) && record.attribute('size') !== '0' ? record.attribute('loop/backing_file') : undefined;
}

/** A loop device's backing file when it is a device node (`losetup /dev/loop0 /dev/sdb`). */
const BACKING_NODE = /^\/dev\/([a-z0-9-]{1,12})$/;

/**
 * A loop device over a block device reaches the same blocks, yet the kernel lists no holder for it:
 * the device under it is in use by the loop device as it would be by a dm or md device.
 */
function markLoopBackings(parsed: Parsed[], loops: readonly AttachedLoop[]): void {
  let byName: Map<string, Parsed> | undefined;
  for (const { entry, file } of loops) {
    const node = BACKING_NODE.exec(file);
    if (!node) continue;
    byName ??= new Map(parsed.map((p) => [p.name, p]));
    const backing = byName.get(node[1]);
    if (backing && backing !== entry && !backing.hidden) backing.hidden = inUseBy([entry.name]);
  }
}

/**
 * Two loop devices over one file are one disk under two names (`losetup` run twice on an image, or
 * on one mounted with `-o loop`): given to two VMs, or to one while the host uses the other, it is
 * written from both sides. So only one of them is offered: the one in use, if any, so that the
 * data the host uses is never offered under another name; else the lowest-numbered. The others
 * and their partitions are hidden as the same file. (Qubes lists both: its issue #10829.)
 */
function markSharedBackingFiles(parsed: Parsed[], loops: readonly AttachedLoop[]): void {
  const byFile = new Map<string, Parsed[]>();
  for (const { entry, file } of loops) {
    const group = byFile.get(file);
    if (group) group.push(entry);
    else byFile.set(file, [entry]);
  }
  let keeperOf: Map<RawDeviceRecord, string> | undefined;
  for (const group of byFile.values()) {
    if (group.length < 2) continue;
    const inUse = group.find((entry) => entry.hidden !== undefined && BUSY_REASONS.test(entry.hidden));
    const keeper = inUse ?? group.reduce((a, b) => (compareNatural(b.name, a.name) < 0 ? b : a));
    keeperOf ??= new Map();
    for (const entry of group) if (entry !== keeper) keeperOf.set(entry.record, keeper.name);
  }
  if (!keeperOf) return;
  for (const entry of parsed) {
    const keeper = keeperOf.get(entry.disk ?? entry.record);
    if (keeper !== undefined && entry.hidden === undefined) entry.hidden = `same file as ${keeper}`;
  }
}

/**
 * What a record says of itself, whatever the rest of the tree: worked out once per record (sources
 * keep record objects across hotplug updates), so a tree of 500 devices is not parsed again in
 * full for each new partition.
 */
interface RecordFacts {
  readonly name: string;
  /** A name Qubes offers, not a skipped kind (zram, ram, Xen frontends). */
  readonly offered: boolean;
  readonly isPartition: boolean;
  readonly majmin?: string;
  /** Why it is hidden, from the record alone; mounts and swap come from the tree's usage. */
  readonly ownReason?: string;
}

const facts = new WeakMap<RawDeviceRecord, RecordFacts>();

function factsOf(record: RawDeviceRecord): RecordFacts {
  const known = facts.get(record);
  if (known) return known;
  const name = kernelName(record);
  const offered = PORT_NAME.test(name) && !SKIPPED.test(name) && record.properties.MAJOR !== XEN_FRONTEND_MAJOR;
  const found: RecordFacts = offered
    ? {
        name,
        offered,
        isPartition:
          record.properties.DEVTYPE === 'partition' ||
          (record.properties.DEVTYPE === undefined && record.attribute('partition') !== undefined),
        majmin: majorMinor(record),
        ownReason: recordHiddenReason(record, name),
      }
    : { name, offered, isPartition: false };
  facts.set(record, found);
  return found;
}

/**
 * The same DeviceInfo object for a record that did not change (sources keep record objects across
 * hotplug updates), so a burst of new partitions does not rebuild every other device.
 */
interface Memo {
  readonly backend: string;
  readonly hidden?: string;
  readonly diskId?: string;
  readonly diskName?: string;
  readonly info: DeviceInfo;
}
const memo = new WeakMap<RawDeviceRecord, Memo>();

function memoized(tree: HostTree, backend: string, entry: Parsed, ids: Map<RawDeviceRecord, string>): DeviceInfo {
  const diskId = entry.disk ? ids.get(entry.disk) : undefined;
  const diskName = entry.disk ? kernelName(entry.disk) : undefined;
  const known = memo.get(entry.record);
  if (
    known &&
    known.backend === backend &&
    known.hidden === entry.hidden &&
    known.diskId === diskId &&
    known.diskName === diskName &&
    !known.info.parent?.devclass.startsWith('usb')
  ) {
    ids.set(entry.record, known.info.deviceId);
    return known.info;
  }
  const info = toDeviceInfo(tree, backend, entry, ids);
  memo.set(entry.record, { backend, hidden: entry.hidden, diskId, diskName, info });
  return info;
}

function kernelName(record: RawDeviceRecord): string {
  const devname = record.properties.DEVNAME;
  return devname ? (devname.startsWith('/dev/') ? devname.slice(5) : devname) : sysname(record.devpath);
}

/**
 * Mounted, swap, held open and excluded images (the tree's usage, read again with every tree)
 * first, then the record's own reason.
 */
function hiddenReason(tree: HostTree, known: RecordFacts, disk?: RawDeviceRecord): string | undefined {
  const { usage } = tree;
  if (known.majmin && usage.mounted.has(known.majmin)) return 'mounted';
  if (usage.swaps.size > 0 && usage.swaps.has(`/dev/${known.name}`)) return 'swap';
  if (known.majmin && usage.heldOpen?.has(known.majmin)) return 'open';
  if (usage.excludedLoops) {
    // A partition of an excluded image is a slice of it.
    const image = disk ? factsOf(disk).majmin : known.majmin;
    if (image && usage.excludedLoops.has(image)) return 'excluded (.qubes-exclude-block-devices)';
  }
  return known.ownReason;
}

function recordHiddenReason(record: RawDeviceRecord, name: string): string | undefined {
  const props = record.properties;
  // Qubes' udev rules: a device a rule excludes (QUBES_EXPORT_BLOCK_DEVICE=0), and the dm devices
  // udev itself leaves alone (LVM's internal volumes: thin pools' data and metadata, snapshots'
  // copy-on-write stores) unless a rule exports them.
  if (props.QUBES_EXPORT_BLOCK_DEVICE === '0') return 'excluded by a udev rule';
  if (props.DM_UDEV_DISABLE_DISK_RULES_FLAG === '1' && props.QUBES_EXPORT_BLOCK_DEVICE !== '1')
    return 'internal device-mapper device';
  const holders = record.entries?.('holders') ?? [];
  if (holders.length > 0) return inUseBy(holders);
  const size = record.attribute('size');
  if (/^loop\d+$/.test(name) && (size === '0' || (size === undefined && !record.attribute('loop/backing_file')))) {
    if (size === '0' || !record.properties.ID_FS_TYPE) return 'empty loop device';
  }
  if (/^sr\d+$/.test(name)) {
    const noMedia = record.properties.ID_CDROM !== undefined ? record.properties.ID_CDROM_MEDIA !== '1' : size === '0';
    if (noMedia) return 'no medium';
  }
  if (/^nbd\d+$/.test(name) && record.attribute('pid') === undefined) return 'not connected';
  const dmName = props.DM_NAME ?? (name.startsWith('dm-') ? record.attribute('dm/name') : undefined);
  if (dmName !== undefined && (dmName === '' || /^(snapshot-|origin-)/.test(dmName)))
    return 'internal device-mapper device';
  return undefined;
}

/** `major:minor`, only when it is one: a backend VM's agent could send anything here. */
function majorMinor(record: RawDeviceRecord): string | undefined {
  const { MAJOR, MINOR } = record.properties;
  const found = MAJOR !== undefined && MINOR !== undefined ? `${MAJOR}:${MINOR}` : record.attribute('dev');
  return found !== undefined && /^\d{1,5}:\d{1,8}$/.test(found) ? found : undefined;
}

function toDeviceInfo(tree: HostTree, backend: string, entry: Parsed, ids: Map<RawDeviceRecord, string>): DeviceInfo {
  const { record, name, isPartition, disk } = entry;
  const diskRecord = disk ?? record;
  const props = record.properties;
  const usb = isPartition ? undefined : usbPlacement(tree, record);

  const parent: Port | undefined =
    isPartition && disk
      ? { devclass: 'block', backend, portId: kernelName(disk) }
      : usb
        ? { devclass: 'usb', backend, portId: usb.portId }
        : undefined;

  const selfId = usb ? usb.interfaceNumber : (/(\d+)$/.exec(name)?.[1] ?? 'None');
  const parentId = isPartition && disk ? ids.get(disk) : usb?.device ? usbDeviceId(tree, usb.device) : undefined;
  const deviceId = `${parentId ?? '0000:0000::?******'}:${selfId}`;
  ids.set(record, deviceId);

  const model = sanitizeText(decodeEnc(props.ID_MODEL_ENC) ?? props.ID_MODEL ?? inherited(tree, diskRecord, 'model'));
  const rawModel = sanitizeText(props.ID_MODEL ?? inherited(tree, diskRecord, 'model')?.trim().replace(/\s+/g, '_'));
  const vendor = sanitizeText(
    decodeEnc(props.ID_VENDOR_ENC) ?? props.ID_VENDOR ?? inherited(tree, diskRecord, 'vendor'),
  );
  const serial = sanitizeText(props.ID_SERIAL_SHORT ?? inherited(tree, diskRecord, 'serial'));
  const label = sanitizeText(decodeEnc(props.ID_FS_LABEL_ENC) ?? props.ID_FS_LABEL);
  // Only the loop device itself has a backing file; its partitions are described like any other.
  const sizeAttribute = record.attribute('size');
  const backingFile = sanitizeText(loopBackingFile(record, name), 4096);
  const dmName = sanitizeText(props.DM_NAME ?? (name.startsWith('dm-') ? record.attribute('dm/name') : undefined));
  const size = Number(sizeAttribute);
  const readOnly = record.attribute('ro') === '1' || (/^sr\d+$/.test(name) && props.ID_CDROM_MEDIA === '1');

  // Qubes' block description: the loop's backing file, the dm name, or "model (label)".
  const described = backingFile ?? dmName;
  // Qubes writes udev's ID_FS_LABEL there, whose blanks are `_` like ID_MODEL's.
  const legacyDescription = described ?? trusted(`${rawModel ?? ''} (${label?.replace(/\s+/g, '_') ?? ''})`);
  const parentBackingFile =
    disk && /^loop\d+p\d+$/.test(name) ? sanitizeText(disk.attribute('loop/backing_file'), 4096) : undefined;
  const productName =
    described ??
    (label ? trusted(model ? `${model} (${label})` : `(${label})`) : (model ?? parentBackingFile ?? trusted(name)));

  const data: Record<string, string | number | boolean> = {
    kind: isPartition ? 'partition' : 'disk',
    'read-only': readOnly,
    // Partitions have no `removable` of their own: they are as removable as their disk.
    removable: (disk ?? record).attribute('removable') === '1',
    devnode: `/dev/${name}`,
  };
  if (Number.isFinite(size) && sizeAttribute !== undefined) data.size = size * 512;
  const majmin = majorMinor(record);
  if (majmin) data['major-minor'] = majmin;
  // Kernels name partitions after their number (sda1, nvme0n1p2) when nothing else says it.
  const partition = isPartition
    ? (props.PARTN ?? record.attribute('partition') ?? props.ID_PART_ENTRY_NUMBER ?? /(\d+)$/.exec(name)?.[1])
    : undefined;
  if (partition) data.partition = Number(partition);
  const fsType = sanitizeText(props.ID_FS_TYPE);
  if (fsType) data['fs-type'] = fsType;
  if (label) data.label = label;
  if (model) data.model = model;
  if (vendor) data.vendor = vendor;
  if (backingFile) data['backing-file'] = backingFile;
  if (usb) data['usb-interface'] = `${usb.portId}:${usb.interfaceNumber}`;

  return {
    port: { devclass: 'block', backend, portId: name },
    deviceId,
    manufacturer: trusted(parent ? `sub-device of ${portLabel(parent)}` : `hosted by ${backend}`),
    name: productName,
    serial,
    interfaces: BLOCK_INTERFACES,
    parent,
    hiddenReason: entry.hidden,
    ...(entry.hidden && BUSY_REASONS.test(entry.hidden) ? { inUse: true } : {}),
    legacyDescription,
    data,
  };
}

/** An attribute of the nearest device that has it: a SCSI disk's model sits on its SCSI device. */
function inherited(tree: HostTree, record: RawDeviceRecord, attribute: string): string | undefined {
  // A virtual device (loop, zram, device-mapper) has no hardware to ask.
  if (record.devpath.startsWith('/devices/virtual/')) return undefined;
  const own = record.attribute(`device/${attribute}`);
  if (own !== undefined) return own;
  for (const ancestor of tree.ancestors(record)) {
    if (ancestor.subsystem === 'usb' || ancestor.subsystem === 'pci') break;
    const value = ancestor.attribute(attribute);
    if (value !== undefined) return value;
  }
  return undefined;
}

function decodeEnc(value: string | undefined): string | undefined {
  return value === undefined ? undefined : decodeUdevEscapes(value);
}
