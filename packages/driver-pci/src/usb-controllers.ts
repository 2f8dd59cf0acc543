/**
 * Which USB controller can be given to a USB VM: the report Qubes users make by hand (`lsusb`,
 * `readlink /sys/bus/usb/devices/usbN`, `ls /sys/kernel/iommu_groups/*`) and get wrong. Every USB
 * host controller gets a verdict and the reasons for it:
 *
 *  - `unsafe`: handing it over takes something the host runs on or locks the user out: the host's
 *    keyboard or pointing device behind it, a disk the host uses behind it (the root or boot disk,
 *    a mounted stick), or an IOMMU group shared with a function the host needs (the group goes to
 *    vfio-pci whole);
 *  - `impractical`: it would not work, or only badly: the host has no IOMMU, the controller
 *    supports no reset (Qubes' strict reset refuses it; `no-strict-reset` may leak data between
 *    VMs), or it is the only controller of a host with no other keyboard (a keyboard plugged in later
 *    could never reach the host);
 *  - `safe for a USB VM`: none of those.
 *
 * Notes say what goes along (the other members of its IOMMU group), what the source could not tell
 * (a recording without IOMMU groups or reset support), and what to keep in mind (USB storage behind
 * it that the host might boot from: a live USB, an Anti Evil Maid stick).
 */
import { type HostTree, describeDevice } from '@devgate/core';
import { type Behind, type PciFunction, type ResetSupport } from './parse-pci-devices.js';
import { type PciHost, inputLabel, isBridge, isUsbController, parsePciDevices, readPciHost } from './pci-devices.js';
import { type PciNames } from './pci-ids.js';

export type Verdict = 'safe for a USB VM' | 'unsafe' | 'impractical';

/** Whether the host has an IOMMU: the live host can tell; a recording usually cannot. */
export type IommuPresence = 'present' | 'absent' | 'unknown';

export interface ControllerReport {
  /** `dom0:00_14.0` */
  readonly port: string;
  readonly portId: string;
  readonly sbdf: string;
  /** Qubes' description: `PCI_USB: Intel Corporation ...` */
  readonly description: string;
  /** `XHCI`, `EHCI`, ... */
  readonly kind: string;
  readonly driver: string | null;
  readonly verdict: Verdict;
  /** Why it is unsafe or impractical; empty when it is safe. */
  readonly reasons: readonly string[];
  readonly notes: readonly string[];
  readonly iommuGroup: string | null;
  /** The other functions of its group, which go to vfio-pci with it. */
  readonly groupMembers: readonly string[];
  readonly reset: ResetSupport;
  readonly behind: Behind;
}

export interface ReportOptions {
  readonly backend?: string;
  /** Default: `present` if any function of the tree has an IOMMU group, else `unknown`. */
  readonly iommu?: IommuPresence;
}

const KINDS: Record<number, string> = { 0x00: 'UHCI', 0x10: 'OHCI', 0x20: 'EHCI', 0x30: 'XHCI', 0x80: 'USB' };

export function usbControllerReport(tree: HostTree, names: PciNames, options: ReportOptions = {}): ControllerReport[] {
  const backend = options.backend ?? 'dom0';
  const host = readPciHost(tree, names);
  const iommu = options.iommu ?? (host.functions.some((fn) => fn.iommuGroup !== undefined) ? 'present' : 'unknown');
  const descriptions = new Map(
    parsePciDevices(tree, backend, names).map((d) => [String(d.data.sbdf), describeDevice(d)] as const),
  );
  const controllers = host.functions.filter(isUsbController);
  return controllers.map((fn) => judge(fn, host, controllers, iommu, backend, descriptions));
}

function judge(
  fn: PciFunction,
  host: PciHost,
  controllers: readonly PciFunction[],
  iommu: IommuPresence,
  backend: string,
  descriptions: ReadonlyMap<string, string>,
): ControllerReport {
  const unsafe: string[] = [];
  const impractical: string[] = [];
  const notes: string[] = [];
  const bySbdf = new Map(host.functions.map((f) => [f.sbdf, f]));

  // What the host would lose.
  const keyboards = host.inputs.filter((i) => i.kinds.includes('keyboard'));
  const mine = keyboards.filter((k) => k.behind === fn.sbdf);
  if (host.complete && mine.length > 0 && mine.length === keyboards.length) {
    unsafe.push(
      `the host's only ${mine.length === 1 ? 'keyboard' : 'keyboards'} (${mine.map(inputLabel).join(', ')}) ` +
        `${mine.length === 1 ? 'is' : 'are'} behind it: nothing would be left to type the disk passphrase or log in`,
    );
  } else {
    for (const k of mine) unsafe.push(`the host's keyboard ${inputLabel(k)} is behind it`);
  }
  for (const input of fn.behind.inputs) {
    const pointing = input.kinds.filter((k) => k !== 'keyboard');
    if (pointing.length > 0 && !input.kinds.includes('keyboard')) {
      unsafe.push(`the host's ${pointing[0]} ${inputLabel(input)} is behind it`);
    }
  }
  for (const disk of fn.behind.disks) {
    if (disk.inUse) unsafe.push(`the host uses the disk ${disk.name} behind it (${disk.inUse})`);
  }
  const members = fn.iommuGroupMembers.filter((m) => m !== fn.sbdf);
  for (const member of members) {
    const other = bySbdf.get(member);
    const need = host.directNeeds.get(member);
    if (other && isBridge(other)) continue;
    const input = other?.behind.inputs[0];
    if (need) {
      unsafe.push(`it shares IOMMU group ${fn.iommuGroup} with ${member}, which the host needs (${need.reason})`);
    } else if (input) {
      // The whole group goes to vfio-pci: what is behind the other member goes too.
      unsafe.push(
        `it shares IOMMU group ${fn.iommuGroup} with ${member}, which has the host's ${input.kinds[0]} ${inputLabel(input)} behind it`,
      );
    } else {
      const what = other ? (descriptions.get(member) ?? member) : 'a function the source does not list';
      notes.push(`it shares IOMMU group ${fn.iommuGroup} with ${member} (${what}), which goes to vfio-pci with it`);
    }
  }

  // What would not work.
  if (iommu === 'absent') impractical.push('this host has no IOMMU: VFIO cannot isolate the controller from the host');
  if (fn.reset.supported === false) {
    impractical.push(
      'it supports no reset: the USB VM may fail to start, and -o no-strict-reset=True may leak data between VMs',
    );
  }
  const hostKeyboardsElsewhere = keyboards.some((k) => !controllers.some((c) => c.sbdf === k.behind));
  if (!host.complete) {
    notes.push('the source holds only part of the machine: other controllers and keyboards may exist');
  } else if (controllers.length === 1) {
    if (!hostKeyboardsElsewhere && mine.length === 0) {
      impractical.push(
        'it is the only USB controller and the host has no other keyboard: a keyboard plugged in later could not reach the host',
      );
    } else notes.push('it is the only USB controller: the host keeps no USB port of its own');
  }

  // What the source could not tell, and what to keep in mind.
  if (iommu !== 'absent' && fn.iommuGroup === undefined) {
    notes.push(iommu === 'unknown' ? 'IOMMU group unknown (the source does not record groups)' : 'IOMMU group unknown');
  }
  if (fn.reset.supported === undefined) notes.push('reset support unknown (the source does not record it)');
  const sticks = fn.behind.disks.filter((d) => !d.inUse);
  if (sticks.length > 0) {
    notes.push(
      `USB storage behind it (${sticks.map((d) => (d.label ? `${d.name} "${d.label}"` : d.name)).join(', ')}): ` +
        'if the host boots from it (a live USB, an Anti Evil Maid stick), the host loses it',
    );
  }

  const verdict: Verdict = unsafe.length > 0 ? 'unsafe' : impractical.length > 0 ? 'impractical' : 'safe for a USB VM';
  return {
    port: `${backend}:${fn.portId}`,
    portId: fn.portId,
    sbdf: fn.sbdf,
    description: descriptions.get(fn.sbdf) ?? fn.sbdf,
    kind: KINDS[fn.classCode & 0xff] ?? 'USB',
    driver: fn.driver ?? null,
    verdict,
    reasons: [...unsafe, ...impractical],
    notes,
    iommuGroup: fn.iommuGroup ?? null,
    groupMembers: members,
    reset: fn.reset,
    behind: fn.behind,
  };
}
