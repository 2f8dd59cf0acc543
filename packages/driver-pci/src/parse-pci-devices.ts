/**
 * PCI devices of one backend, from its host tree: the PCI class's parser boundary. Everything read
 * here (sysfs attributes, udev properties, link targets, names from pci.ids and from devices) is
 * untrusted: ids and kernel names are checked against strict patterns, text is sanitized.
 *
 * Besides the device itself (ids, class, driver, IOMMU group, reset support), each PCI function gets
 * what sits behind it, read from the sysfs paths so it works the same on recordings and live: for a
 * USB controller its buses, hubs and USB devices, and for every function the input devices and the
 * disks below it. That is what tells a USB controller that can be given to a USB VM from one that
 * carries the host's keyboard or root disk (usb-controllers.ts).
 */
import {
  type HostTree,
  type RawDeviceRecord,
  type SafeText,
  decodeUdevEscapes,
  isKernelName,
  isUsbDevice,
  isUsbInterface,
  sanitizeText,
  sysname,
  usbIds,
  usbInterfaces,
  compareNatural,
} from '@devgate/core';
import { type PciAddress, SBDF, parseSbdf, pciPortId } from './pci-address.js';
import { type PciNames } from './pci-ids.js';

export type InputKind = 'keyboard' | 'mouse' | 'touchpad' | 'touchscreen' | 'tablet' | 'pointingstick';

export interface InputBehind {
  /** `input5` */
  readonly name: string;
  readonly label?: SafeText;
  readonly kinds: readonly InputKind[];
}

export interface DiskBehind {
  /** `sda`, `nvme0n1` */
  readonly name: string;
  readonly label?: SafeText;
  /** Why the host needs it: `mounted`, `swap`, `held by dm-0`; absent when nothing uses it. */
  readonly inUse?: string;
}

export interface UsbDeviceBehind {
  /** `1-1.6` */
  readonly busid: string;
  /** `04f2:b217` */
  readonly ids: string;
  readonly label?: SafeText;
  readonly hub: boolean;
}

export interface Behind {
  /** Root hubs: `usb1`, `usb2`. */
  readonly usbBuses: readonly string[];
  readonly usbDevices: readonly UsbDeviceBehind[];
  readonly inputs: readonly InputBehind[];
  readonly disks: readonly DiskBehind[];
}

export interface ResetSupport {
  /** undefined: the source cannot tell (a recording without sysfs attributes). */
  readonly supported?: boolean;
  /** `flr`, `pm`, `bus`, ... in the kernel's order, when it says. */
  readonly methods: readonly string[];
}

/** One PCI function, as read from the tree. */
export interface PciFunction {
  readonly devpath: string;
  readonly sbdf: string;
  readonly address: PciAddress;
  readonly portId: string;
  /** 4 lowercase hex digits each. */
  readonly vendorId: string;
  readonly deviceId: string;
  /** 24 bits: class, subclass, programming interface. */
  readonly classCode: number;
  readonly driver?: string;
  readonly iommuGroup?: string;
  /** Every function of the group, this one included, sorted; empty when the group is unknown. */
  readonly iommuGroupMembers: readonly string[];
  readonly reset: ResetSupport;
  readonly vendorName?: SafeText;
  readonly deviceName?: SafeText;
  readonly className?: SafeText;
  readonly subclassName?: SafeText;
  /** The firmware's boot display (`boot_vga`), when the source says. */
  readonly bootVga?: boolean;
  /** A DRM card or framebuffer hangs off it: a display the host drives. */
  readonly drivesDisplay: boolean;
  readonly behind: Behind;
}

const BUSID = /^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}$/;
const ROOT_HUB = /^usb\d{1,3}$/;
const INPUT = /^input\d{1,6}$/;
const HEX = /^(0x)?([0-9a-fA-F]{1,6})$/;
const DRIVER_NAME = /^[A-Za-z0-9_.+-]{1,64}$/;
const RESET_METHOD = /^[a-z_]{1,16}$/;
const GROUP = /^\d{1,6}$/;
const MAX_LIST = 256;

/**
 * Every PCI function of the tree, sorted by SBDF. `names` resolves ids to names (pci.ids); udev's
 * `*_FROM_DATABASE` properties stand in where it has none.
 */
export function readPciFunctions(tree: HostTree, names: PciNames): PciFunction[] {
  // A PCI function's directory is named by its SBDF, on a plain path (no `.`, `..` or empty segments).
  const pci = tree.devices('pci').filter((r) => parseSbdf(sysname(r.devpath)) !== undefined && plainPath(r.devpath));
  const byPath = new Map(pci.map((r) => [r.devpath, r]));
  const behind = collectBehind(tree, byPath);
  const groups = groupsOf(pci);
  const secondary = new Map<string, number>();
  for (const record of pci) {
    const bus = parseHex(record.attribute('secondary_bus_number'), 0xff);
    if (bus !== undefined) secondary.set(sysname(record.devpath), bus);
  }
  const functions = pci
    .map((record) => toFunction(record, names, behind.get(record.devpath) ?? EMPTY_BEHIND, groups, secondary))
    // A directory the source knows nothing about (an lsblk dump keeps the PCI directories above its
    // disks and nothing in them) is not a device it describes.
    .filter((fn) => fn.vendorId !== '0000' || fn.classCode !== 0 || fn.driver !== undefined)
    .sort((a, b) => (a.sbdf < b.sbdf ? -1 : a.sbdf > b.sbdf ? 1 : 0));
  return withDisplays(tree, functions);
}

function plainPath(devpath: string): boolean {
  return (
    devpath.startsWith('/devices/') &&
    devpath
      .slice(1)
      .split('/')
      .every((part) => part !== '' && part !== '.' && part !== '..')
  );
}

const EMPTY_BEHIND: Behind = { usbBuses: [], usbDevices: [], inputs: [], disks: [] };

function toFunction(
  record: RawDeviceRecord,
  names: PciNames,
  behind: Behind,
  groups: Map<string, string[]>,
  secondary: Map<string, number>,
): PciFunction {
  const sbdf = sysname(record.devpath);
  const address = parseSbdf(sbdf)!;
  const props = record.properties;
  const [idVendor, idDevice] = (props.PCI_ID ?? '').split(':');
  const modalias =
    /^pci:v0000([0-9A-Fa-f]{4})d0000([0-9A-Fa-f]{4}).*bc([0-9A-Fa-f]{2})sc([0-9A-Fa-f]{2})i([0-9A-Fa-f]{2})/.exec(
      props.MODALIAS ?? record.attribute('modalias') ?? '',
    );
  const vendorId = hex4(record.attribute('vendor')) ?? hex4(idVendor) ?? hex4(modalias?.[1]) ?? '0000';
  const deviceId = hex4(record.attribute('device')) ?? hex4(idDevice) ?? hex4(modalias?.[2]) ?? '0000';
  const classCode =
    parseHex(record.attribute('class'), 0xffffff) ??
    parseHex(props.PCI_CLASS, 0xffffff) ??
    (modalias ? parseInt(modalias[3] + modalias[4] + modalias[5], 16) : 0);
  const driverLink = record.link?.('driver');
  const driverName = props.DRIVER ?? (driverLink ? driverLink.slice(driverLink.lastIndexOf('/') + 1) : undefined);
  const driver = driverName !== undefined && DRIVER_NAME.test(driverName) ? driverName : undefined;
  const iommuGroup = groupOf(record);
  const listed = record.entries?.('iommu_group/devices')?.filter((m) => SBDF.test(m));
  const members = listed && listed.length > 0 ? listed : iommuGroup !== undefined ? (groups.get(iommuGroup) ?? []) : [];
  const bootVgaText = record.attribute('boot_vga')?.trim();
  return {
    devpath: record.devpath,
    sbdf,
    address,
    portId: pciPortId(record.devpath, (bridge) => secondary.get(bridge)),
    vendorId,
    deviceId,
    classCode,
    driver,
    iommuGroup,
    iommuGroupMembers: [...new Set([...members, ...(iommuGroup !== undefined ? [sbdf] : [])])]
      .sort()
      .slice(0, MAX_LIST),
    reset: resetSupport(record),
    vendorName: sanitizeText(names.vendor(vendorId)) ?? sanitizeText(props.ID_VENDOR_FROM_DATABASE),
    deviceName: sanitizeText(names.device(vendorId, deviceId)) ?? sanitizeText(props.ID_MODEL_FROM_DATABASE),
    className:
      sanitizeText(names.className(classCode)) ??
      sanitizeText(props.ID_PCI_INTERFACE_FROM_DATABASE) ??
      sanitizeText(props.ID_PCI_SUBCLASS_FROM_DATABASE),
    subclassName: sanitizeText(names.subclassName(classCode)) ?? sanitizeText(props.ID_PCI_SUBCLASS_FROM_DATABASE),
    bootVga: bootVgaText === '1' ? true : bootVgaText === '0' ? false : undefined,
    drivesDisplay: false,
    behind,
  };
}

/** The group number from the `iommu_group` link (`../../../kernel/iommu_groups/14`). */
function groupOf(record: RawDeviceRecord): string | undefined {
  const target = record.link?.('iommu_group')?.trim();
  if (!target) return undefined;
  const parts = target.split('/');
  const number = parts[parts.length - 1];
  return parts[parts.length - 2] === 'iommu_groups' && GROUP.test(number) ? number : undefined;
}

/** Members by group number, for sources that have the links but cannot list the group's directory. */
function groupsOf(pci: readonly RawDeviceRecord[]): Map<string, string[]> {
  const groups = new Map<string, string[]>();
  for (const record of pci) {
    const group = groupOf(record);
    if (group === undefined) continue;
    const members = groups.get(group) ?? [];
    members.push(sysname(record.devpath));
    groups.set(group, members);
  }
  return groups;
}

/**
 * What the kernel can do to reset the function. `reset_method` (Linux 5.15+) lists the methods and is
 * absent when there is none; the write-only `reset` file exists exactly when there is one. A source that
 * can list the device directory answers both; a recording of attributes only can prove support, not
 * its absence.
 */
function resetSupport(record: RawDeviceRecord): ResetSupport {
  const methods = (record.attribute('reset_method') ?? '')
    .trim()
    .split(/\s+/)
    .filter((m) => RESET_METHOD.test(m))
    .slice(0, 16);
  if (methods.length > 0) return { supported: true, methods };
  // A listing of a whole device directory (every one has `vendor`), not of a trimmed copy.
  const listing = record.entries?.('.');
  if (listing?.includes('vendor')) return { supported: listing.includes('reset'), methods: [] };
  return { methods: [] };
}

/**
 * Walks every record once and files it under the nearest PCI function on its path: the USB buses and
 * devices, input devices and disks behind each function. Nested functions (behind a bridge) get their
 * own; a bridge gets only what is not behind another function.
 */
function collectBehind(tree: HostTree, pci: ReadonlyMap<string, RawDeviceRecord>): Map<string, Behind> {
  const found = new Map<
    string,
    { buses: Set<string>; usb: Map<string, UsbDeviceBehind>; inputs: InputBehind[]; disks: DiskBehind[] }
  >();
  const slot = (devpath: string) => {
    let entry = found.get(devpath);
    if (!entry) {
      entry = { buses: new Set(), usb: new Map(), inputs: [], disks: [] };
      found.set(devpath, entry);
    }
    return entry;
  };
  // The nearest PCI function above a path, remembered by directory: the 256 partitions of one disk
  // (and every device under one bus) share the walk up.
  const owners = new Map<string, string | undefined>();
  const owner = (devpath: string): string | undefined => {
    const at = devpath.lastIndexOf('/');
    if (at <= 0) return undefined;
    const parent = devpath.slice(0, at);
    if (pci.has(parent)) return parent;
    if (owners.has(parent)) return owners.get(parent);
    const found = owner(parent);
    owners.set(parent, found);
    return found;
  };
  for (const record of tree.devices()) {
    // Only USB devices, input devices and disks are filed (a partition counts with its disk).
    const kind = record.subsystem;
    if (kind !== 'usb' && kind !== 'input' && (kind !== 'block' || record.properties.DEVTYPE !== 'disk')) continue;
    const name = sysname(record.devpath);
    if (!isKernelName(name)) continue;
    const at = owner(record.devpath);
    if (at === undefined) continue;
    if (record.subsystem === 'usb') {
      const entry = slot(at);
      if (ROOT_HUB.test(name) && isUsbDevice(record)) entry.buses.add(name);
      else if (isUsbDevice(record) && BUSID.test(name)) entry.usb.set(name, usbBehind(record, name));
      else if (isUsbInterface(record)) {
        // A dump may hold a device's interfaces and not the device (see driver-usb): the busid is
        // the interface name up to its colon, and the kernel copies PRODUCT and TYPE onto it. A
        // root hub's own interfaces (`1-0:1.0`, under `usb1`) are not devices.
        const busid = name.slice(0, name.indexOf(':'));
        const parent = sysname(record.devpath.slice(0, record.devpath.lastIndexOf('/')));
        if (BUSID.test(busid) && parent === busid && !entry.usb.has(busid))
          entry.usb.set(busid, usbBehind(record, busid));
      }
    } else if (record.subsystem === 'input' && INPUT.test(name)) {
      const kinds = inputKinds(record);
      if (kinds.length > 0) {
        const label = sanitizeText(unquote(record.properties.NAME) ?? record.attribute('name'));
        slot(at).inputs.push({ name, ...(label ? { label } : {}), kinds });
      }
    } else if (record.subsystem === 'block' && record.properties.DEVTYPE === 'disk') {
      const inUse = diskInUse(tree, record, partitionsOf(tree, record));
      const label = sanitizeText(record.properties.ID_MODEL_FROM_DATABASE ?? modelOf(record));
      slot(at).disks.push({ name, ...(label ? { label } : {}), ...(inUse ? { inUse } : {}) });
    }
  }
  const result = new Map<string, Behind>();
  for (const [devpath, entry] of found) {
    result.set(devpath, {
      usbBuses: [...entry.buses].sort(compareNatural).slice(0, MAX_LIST),
      usbDevices: [...entry.usb.values()].sort((a, b) => compareNatural(a.busid, b.busid)).slice(0, MAX_LIST),
      inputs: entry.inputs.sort((a, b) => compareNatural(a.name, b.name)).slice(0, MAX_LIST),
      disks: entry.disks.sort((a, b) => compareNatural(a.name, b.name)).slice(0, MAX_LIST),
    });
  }
  return result;
}

function usbBehind(record: RawDeviceRecord, busid: string): UsbDeviceBehind {
  const props = record.properties;
  let ids: string;
  if (isUsbDevice(record)) {
    const { vendorId, productId } = usbIds(record);
    ids = `${vendorId}:${productId}`;
  } else {
    const [v, p] = (props.PRODUCT ?? '')
      .split('/')
      .map((x) => (/^[0-9a-f]{1,4}$/i.test(x) ? x.padStart(4, '0') : '0000'));
    ids = `${v ?? '0000'}:${p ?? '0000'}`.toLowerCase();
  }
  const classText = record.attribute('bDeviceClass');
  const deviceClass = classText !== undefined ? parseInt(classText, 16) : parseInt(props.TYPE?.split('/')[0] ?? '', 10);
  // With no string descriptor udev puts the hex id in ID_MODEL_ENC: that is not a name.
  const enc = props.ID_MODEL_ENC ? decodeUdevEscapes(props.ID_MODEL_ENC) : undefined;
  const fromUdev = enc !== undefined && enc.trim().toLowerCase() !== ids.slice(5) ? enc : undefined;
  const label = sanitizeText(record.attribute('product') ?? fromUdev ?? props.ID_MODEL_FROM_DATABASE);
  return { busid, ids, ...(label ? { label } : {}), hub: deviceClass === 9 };
}

/** udev's classification when it ran, else the kernel's capability bitmaps (as udev's input_id reads them). */
export function inputKinds(record: RawDeviceRecord): InputKind[] {
  const props = record.properties;
  if (props.ID_INPUT !== undefined) {
    const kinds: InputKind[] = [];
    if (props.ID_INPUT_KEYBOARD === '1') kinds.push('keyboard');
    if (props.ID_INPUT_MOUSE === '1') kinds.push('mouse');
    if (props.ID_INPUT_TOUCHPAD === '1') kinds.push('touchpad');
    if (props.ID_INPUT_TOUCHSCREEN === '1') kinds.push('touchscreen');
    if (props.ID_INPUT_TABLET === '1') kinds.push('tablet');
    if (props.ID_INPUT_POINTINGSTICK === '1') kinds.push('pointingstick');
    return kinds;
  }
  const key = bitmap(record.attribute('capabilities/key'));
  const rel = bitmap(record.attribute('capabilities/rel'));
  const abs = bitmap(record.attribute('capabilities/abs'));
  const kinds: InputKind[] = [];
  // KEYBOARD: ESC, the digits and Q to D (key bits 1-31) all present.
  if (((key[0] ?? 0n) & 0xfffffffen) === 0xfffffffen) kinds.push('keyboard');
  const hasBit = (words: bigint[], bit: number) => ((words[Math.floor(bit / 64)] ?? 0n) >> BigInt(bit % 64)) & 1n;
  const mouseButton = hasBit(key, 0x110) === 1n; // BTN_LEFT
  if (hasBit(rel, 0) && hasBit(rel, 1) && mouseButton) kinds.push('mouse');
  else if (hasBit(abs, 0) && hasBit(abs, 1)) {
    // udev's order for ABS_X/Y: a pen is a tablet, a finger tool a touchpad, a mouse button an
    // absolute mouse (QEMU's usb-tablet), BTN_TOUCH a touchscreen.
    if (hasBit(key, 0x14b) || hasBit(key, 0x140)) kinds.push('tablet');
    else if (hasBit(key, 0x145)) kinds.push('touchpad');
    else if (mouseButton) kinds.push('mouse');
    else if (hasBit(key, 0x14a)) kinds.push('touchscreen');
  }
  return kinds;
}

/** A capability bitmap: hex words, most significant first, 64 bits each (x86-64). Index 0 is the lowest. */
function bitmap(text: string | undefined): bigint[] {
  if (!text) return [];
  const words = text.trim().split(/\s+/).slice(-16);
  return words.reverse().map((w) => (/^[0-9a-f]{1,16}$/i.test(w) ? BigInt(`0x${w}`) : 0n));
}

/** Partitions by disk devpath. */
/**
 * A disk's partitions (the block devices right under it). Asked only for the disks behind a PCI
 * function: most of a tree's partitions are loop devices' (virtual), behind none.
 */
function partitionsOf(tree: HostTree, disk: RawDeviceRecord): RawDeviceRecord[] {
  const prefix = disk.devpath + '/';
  return tree
    .devices('block')
    .filter(
      (record) =>
        record.properties.DEVTYPE === 'partition' &&
        record.devpath.startsWith(prefix) &&
        !record.devpath.includes('/', prefix.length),
    );
}

/** Mounted (or swap, or held by device-mapper, LVM, RAID): the disk itself or one of its partitions. */
function diskInUse(tree: HostTree, disk: RawDeviceRecord, partitions: readonly RawDeviceRecord[]): string | undefined {
  for (const record of [disk, ...partitions]) {
    const { MAJOR, MINOR, DEVNAME } = record.properties;
    const name = sysname(record.devpath);
    if (MAJOR !== undefined && MINOR !== undefined && tree.usage.mounted.has(`${MAJOR}:${MINOR}`)) {
      return record === disk ? 'mounted' : `${name} mounted`;
    }
    const node = DEVNAME ? (DEVNAME.startsWith('/') ? DEVNAME : `/dev/${DEVNAME}`) : `/dev/${name}`;
    if (tree.usage.swaps.has(node)) return record === disk ? 'swap' : `${name} is swap`;
    const holders = record.entries?.('holders') ?? [];
    if (holders.length > 0)
      return `${record === disk ? '' : `${name} `}held by ${holders.find(isKernelName) ?? 'another device'}`;
  }
  return undefined;
}

function modelOf(record: RawDeviceRecord): string | undefined {
  const enc = record.properties.ID_MODEL_ENC;
  return enc ? decodeUdevEscapes(enc).trim() : (record.properties.ID_MODEL ?? record.attribute('device/model'));
}

function unquote(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  return text.length >= 2 && text.startsWith('"') && text.endsWith('"') ? text.slice(1, -1) : text;
}

function hex4(value: string | undefined): string | undefined {
  const m = HEX.exec(value?.trim() ?? '');
  return m && m[2].length <= 4 ? m[2].toLowerCase().padStart(4, '0') : undefined;
}

function parseHex(value: string | undefined, max: number): number | undefined {
  const m = HEX.exec(value?.trim() ?? '');
  if (!m) return undefined;
  const n = parseInt(m[2], 16);
  return n <= max ? n : undefined;
}

/** Marks the functions that drive a display (a DRM card or framebuffer below them). */
function withDisplays(tree: HostTree, functions: readonly PciFunction[]): PciFunction[] {
  const drives = new Set<string>();
  for (const record of [...tree.devices('drm'), ...tree.devices('graphics')]) {
    const name = sysname(record.devpath);
    if (!/^(card\d+|fb\d+)$/.test(name)) continue;
    for (const fn of functions) if (record.devpath.startsWith(fn.devpath + '/')) drives.add(fn.devpath);
  }
  return functions.map((fn) => (drives.has(fn.devpath) ? { ...fn, drivesDisplay: true } : fn));
}

/** An input device anywhere on the host, and the PCI function it sits behind (none for i8042, ACPI, ...). */
export interface HostInput extends InputBehind {
  readonly behind?: string;
}

/**
 * Every keyboard and pointing device of the tree, wherever it sits. Software devices
 * (`/devices/virtual/input`: keyd, input-remapper, ydotool, an input proxy's uinput) are not: they
 * only replay a real device, and none exists in the initramfs that asks for the disk passphrase.
 */
export function hostInputs(tree: HostTree): HostInput[] {
  const result: HostInput[] = [];
  for (const record of tree.devices('input')) {
    const name = sysname(record.devpath);
    if (!INPUT.test(name) || record.devpath.startsWith('/devices/virtual/')) continue;
    const kinds = inputKinds(record);
    if (kinds.length === 0) continue;
    const parts = record.devpath.split('/');
    let behind: string | undefined;
    for (let i = parts.length - 2; i >= 0 && behind === undefined; i--) {
      // A path segment shaped like an SBDF is a PCI function, recorded or not.
      if (SBDF.test(parts[i])) behind = parts[i];
    }
    const label = sanitizeText(unquote(record.properties.NAME) ?? record.attribute('name'));
    result.push({ name, ...(label ? { label } : {}), kinds, ...(behind ? { behind } : {}) });
  }
  // A USB keyboard or mouse whose input device the source did not record (a dump of USB devices
  // only): its HID boot interfaces say what it is.
  for (const device of tree.devices('usb')) {
    const busid = sysname(device.devpath);
    if (!isUsbDevice(device) || !BUSID.test(busid)) continue;
    const codes = usbInterfaces(tree, device);
    const kinds: InputKind[] = [];
    if (codes.includes('u030101')) kinds.push('keyboard');
    if (codes.includes('u030102')) kinds.push('mouse');
    if (kinds.length === 0 || tree.descendants(device, 'input').some((i) => INPUT.test(sysname(i.devpath)))) continue;
    const behind = device.devpath
      .split('/')
      .filter((part) => SBDF.test(part))
      .pop();
    const label = usbBehind(device, busid).label;
    result.push({ name: busid, ...(label ? { label } : {}), kinds, ...(behind ? { behind } : {}) });
  }
  return result.sort((a, b) => compareNatural(a.name, b.name));
}
