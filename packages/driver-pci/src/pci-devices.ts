/**
 * PCI functions as devgate devices (`DeviceInfo`), and what the host cannot give away.
 *
 * Qubes lists every PCI device and trusts the user not to hand over the host bridge. devgate keeps
 * the devices the host needs in the listing but hidden, with the reason (`devgate list --all`,
 * `qvm-pci list --all` show them; attaching one is refused with that reason):
 *
 *  - the host bridge and every other bridge (bridges stay with the host; VFIO never needs them);
 *  - a function with a disk behind it that the host uses (mounted, swap, held): the root disk's
 *    controller, a USB controller whose stick is mounted;
 *  - the display the host uses (the firmware's boot display, else one that drives a DRM card);
 *  - a function with every keyboard of the host behind it (nothing would be left to log in with);
 *  - a function whose IOMMU group holds one of those: the group goes to vfio-pci as a whole.
 */
import {
  type DataValue,
  type DeviceInfo,
  type HostTree,
  type RawDeviceRecord,
  type InterfaceCode,
  type SafeText,
  interfaceCode,
  trusted,
} from '@devgate/core';
import { type HostInput, type PciFunction, hostInputs, readPciFunctions } from './parse-pci-devices.js';
import { type PciNames } from './pci-ids.js';

/** Everything about a host's PCI functions that decisions need, read once per tree. */
export interface PciHost {
  readonly functions: readonly PciFunction[];
  readonly inputs: readonly HostInput[];
  /**
   * Whether the tree is a whole machine (it has the host bridge). A umockdev recording holds one
   * device and its ancestors: "the only keyboard" or "the only controller" cannot be said of it.
   */
  readonly complete: boolean;
  /** Why the host needs a function, by SBDF (the reasons above). */
  readonly needs: ReadonlyMap<string, HostNeed>;
  /** The same, without the needs that come only from sharing a group with a needed function. */
  readonly directNeeds: ReadonlyMap<string, HostNeed>;
}

export interface HostNeed {
  readonly reason: string;
  /** A disk behind it is in use: whatever contains the function cannot be handed over either. */
  readonly inUse?: boolean;
}

export function readPciHost(tree: HostTree, names: PciNames): PciHost {
  const functions = readPciFunctions(tree, names);
  const inputs = hostInputs(tree);
  const complete = functions.some((fn) => fn.classCode >> 8 === HOST_BRIDGE);
  const direct = new Map<string, HostNeed>();
  for (const fn of functions) {
    const need = directNeed(fn, inputs, complete);
    if (need) direct.set(fn.sbdf, need);
  }
  // A group goes to vfio-pci whole: a function whose group holds something the host needs is needed too.
  const needs = new Map(direct);
  const bySbdf = new Map(functions.map((fn) => [fn.sbdf, fn]));
  for (const fn of functions) {
    if (needs.has(fn.sbdf)) continue;
    for (const member of fn.iommuGroupMembers) {
      const other = bySbdf.get(member);
      const need = direct.get(member);
      if (member === fn.sbdf || !need || !other || isBridge(other)) continue;
      needs.set(fn.sbdf, {
        reason: `it shares IOMMU group ${fn.iommuGroup} with ${member}, which the host needs (${need.reason})`,
      });
      break;
    }
  }
  return { functions, inputs, complete, needs, directNeeds: direct };
}

const HOST_BRIDGE = 0x0600;

export function isBridge(fn: PciFunction): boolean {
  return fn.classCode >> 16 === 0x06;
}

export function isUsbController(fn: PciFunction): boolean {
  // UHCI, OHCI, EHCI, xHCI and unspecified host controllers; not USB4 host interfaces (0x40, a
  // Thunderbolt NHI) nor USB device controllers (0xfe).
  return fn.classCode >> 8 === 0x0c03 && [0x00, 0x10, 0x20, 0x30, 0x80].includes(fn.classCode & 0xff);
}

function directNeed(fn: PciFunction, inputs: readonly HostInput[], complete: boolean): HostNeed | undefined {
  if (fn.classCode >> 8 === HOST_BRIDGE) return { reason: 'the host bridge' };
  if (isBridge(fn)) return { reason: 'a bridge: bridges stay with the host' };
  const busy = fn.behind.disks.find((d) => d.inUse);
  if (busy) return { reason: `the host uses ${busy.name} behind it (${busy.inUse})`, inUse: true };
  if (fn.classCode >> 16 === 0x03 && (fn.bootVga === true || (fn.bootVga === undefined && fn.drivesDisplay))) {
    return { reason: 'the display the host uses' };
  }
  const keyboards = inputs.filter((i) => i.kinds.includes('keyboard'));
  if (complete && keyboards.length > 0 && keyboards.every((k) => k.behind === fn.sbdf)) {
    return {
      reason: `the host's only ${plural(keyboards.length, 'keyboard')} (${keyboards.map(inputLabel).join(', ')}) ${keyboards.length === 1 ? 'is' : 'are'} behind it`,
    };
  }
  return undefined;
}

export function inputLabel(input: { name: string; label?: SafeText }): string {
  return input.label ? `${input.name} "${input.label}"` : input.name;
}

function plural(n: number, word: string): string {
  return n === 1 ? word : `${word}s`;
}

/** Qubes' interface code for a PCI function: `p` and the 24-bit class (`p0c0330`). */
export function pciInterface(fn: PciFunction): InterfaceCode {
  return interfaceCode('p', fn.classCode >> 16, fn.classCode >> 8, fn.classCode);
}

/** Qubes' PCI device id: `0x8086:0x1c2d::p0c0320` (no serial). */
export function pciDeviceId(fn: PciFunction): string {
  return `0x${fn.vendorId}:0x${fn.deviceId}::${pciInterface(fn)}`;
}

export function parsePciDevices(tree: HostTree, backend: string, names: PciNames): DeviceInfo[] {
  // A new tree for every hotplug burst: a burst of loop partitions changes nothing PCI reads, and
  // every function's devices would be made (and compared) again for nothing.
  const inputs = pciInputs(tree);
  let byBackend = memo.get(names);
  const known = byBackend?.get(backend);
  if (known && sameInputs(known.inputs, inputs)) return known.devices;
  const host = readPciHost(tree, names);
  const devices = host.functions.map((fn) => toDeviceInfo(fn, backend, host.needs.get(fn.sbdf)));
  if (!byBackend) memo.set(names, (byBackend = new Map()));
  byBackend.set(backend, { inputs, devices });
  return devices;
}

/**
 * What PCI devices are made of: the records of the subsystems read here, except block devices that
 * no PCI function can sit above (`/devices/virtual/`: loop, dm, zram), and what is mounted and swap.
 * Records are never changed (a changed device is a new record), so the same records in the same
 * order, with the same mounts and swap, make the same devices.
 */
interface PciInputs {
  readonly records: readonly RawDeviceRecord[];
  readonly mounted: ReadonlySet<string>;
  readonly swaps: ReadonlySet<string>;
}

const READ_SUBSYSTEMS = ['pci', 'usb', 'input', 'drm', 'graphics', 'block'];
const memo = new WeakMap<PciNames, Map<string, { inputs: PciInputs; devices: DeviceInfo[] }>>();

function pciInputs(tree: HostTree): PciInputs {
  const records: RawDeviceRecord[] = [];
  for (const subsystem of READ_SUBSYSTEMS) {
    for (const record of tree.devices(subsystem)) {
      if (subsystem === 'block' && record.devpath.startsWith('/devices/virtual/')) continue;
      records.push(record);
    }
  }
  return { records, mounted: tree.usage.mounted, swaps: tree.usage.swaps };
}

function sameInputs(a: PciInputs, b: PciInputs): boolean {
  if (a.records.length !== b.records.length || !sameSet(a.mounted, b.mounted) || !sameSet(a.swaps, b.swaps)) {
    return false;
  }
  for (let i = 0; i < a.records.length; i++) if (a.records[i] !== b.records[i]) return false;
  return true;
}

function sameSet(a: ReadonlySet<string>, b: ReadonlySet<string>): boolean {
  if (a === b) return true;
  if (a.size !== b.size) return false;
  for (const value of a) if (!b.has(value)) return false;
  return true;
}

function toDeviceInfo(fn: PciFunction, backend: string, need: HostNeed | undefined): DeviceInfo {
  const data: Record<string, DataValue> = {
    sbdf: fn.sbdf,
    'vendor-id': fn.vendorId,
    'device-id': fn.deviceId,
    class: (fn.classCode >>> 0).toString(16).padStart(6, '0'),
  };
  if (fn.className) data['class-name'] = fn.className;
  if (fn.driver) data.driver = fn.driver;
  if (fn.iommuGroup !== undefined) {
    data['iommu-group'] = fn.iommuGroup;
    data['iommu-group-devices'] = fn.iommuGroupMembers.join(',');
  }
  data.reset =
    fn.reset.supported === undefined ? 'unknown' : fn.reset.supported ? fn.reset.methods.join(',') || 'yes' : 'none';
  const { usbBuses, usbDevices, inputs, disks } = fn.behind;
  if (usbBuses.length > 0) data['usb-buses'] = usbBuses.join(',');
  if (usbDevices.length > 0) {
    data['usb-devices'] = usbDevices
      .map((u) => `${u.busid} ${u.ids}${u.hub ? ' hub' : ''}${u.label ? ` "${u.label}"` : ''}`)
      .join(', ');
  }
  if (inputs.length > 0)
    data['input-devices'] = inputs.map((i) => `${inputLabel(i)} (${i.kinds.join(', ')})`).join(', ');
  if (disks.length > 0) {
    data.disks = disks
      .map((d) => `${d.name}${d.label ? ` "${d.label}"` : ''}${d.inUse ? ` (${d.inUse})` : ''}`)
      .join(', ');
  }
  const vendor = fn.vendorName;
  const product = fn.deviceName;
  const kind = fn.subclassName ?? fn.className ?? trusted('Unknown');
  return {
    port: { devclass: 'pci', backend, portId: fn.portId },
    deviceId: pciDeviceId(fn),
    ...(vendor ? { vendor } : {}),
    ...(product ? { product } : {}),
    interfaces: [pciInterface(fn)],
    // Qubes 4.0-4.2: `<subclass>: <vendor> <device>` (libvirt's names, which come from pci.ids).
    legacyDescription: trusted(
      `${kind}: ${vendor ?? `unknown vendor 0x${fn.vendorId}`} ${product ?? `device 0x${fn.deviceId}`}`,
    ),
    ...(need ? { hiddenReason: need.reason } : {}),
    ...(need?.inUse ? { inUse: true } : {}),
    data,
  };
}
