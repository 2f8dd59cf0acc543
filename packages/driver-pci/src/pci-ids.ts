/**
 * Vendor, device and class names from the PCI ID database (`pci.ids`, Debian's `pci.ids` package,
 * pulled in by `hwdata`), read by core's `idsFile` (the format shared with usb.ids):
 *
 *   8086  Intel Corporation                a vendor: 4 hex digits, two spaces, the name
 *   \t1c2d  6 Series/C200 Series ...       a device of the vendor above: one tab first
 *   \t\t17aa 21ce  ...                     a subsystem line: not used here
 *   C 0c  Serial bus controller            the class section at the end: a class,
 *   \t03  USB controller                   its subclasses (one tab),
 *   \t\t30  XHCI                           and their programming interfaces (two tabs)
 *
 * The file is about 1.3 MB; it is read on the first lookup only, and only the vendors, devices and
 * classes asked for are looked up (and cached). It is untrusted text like any other input: bounded
 * in size, malformed lines skipped, and what it gives is sanitized by the caller
 * (parse-pci-devices.ts).
 */
import { type IdsFile, idsFile } from '@devgate/core';

export interface PciNames {
  /** The vendor's name for a 4-digit lowercase hex id. */
  vendor(vendorId: string): string | undefined;
  /** The device's name under its vendor. */
  device(vendorId: string, deviceId: string): string | undefined;
  /**
   * The most precise class name for a 24-bit class code: the programming interface's, else the
   * subclass's, else the class's.
   */
  className(classCode: number): string | undefined;
  /** The subclass's name (`USB controller`): what Qubes' old qvm-pci shows before the vendor. */
  subclassName(classCode: number): string | undefined;
}

/** Where distributions install it: hwdata's path first (a link in Debian), then the `pci.ids` package's. */
export const PCI_IDS_PATHS: readonly string[] = ['/usr/share/hwdata/pci.ids', '/usr/share/misc/pci.ids'];

/** Far above the real file (1.3 MB); anything larger is not a pci.ids and is ignored. */
const MAX_FILE_BYTES = 16 * 1024 * 1024;

/** A lazy reader over the first of `paths` that can be read; with none, every lookup is undefined. */
export function pciIdsNames(paths: string | readonly string[] = PCI_IDS_PATHS): PciNames {
  return pciNamesOf(idsFile(paths, { maxBytes: MAX_FILE_BYTES }));
}

/** PciNames over an ID file already open (or text: `idsText`). */
export function pciNamesOf(ids: IdsFile): PciNames {
  const hex2 = (n: number) => (n & 0xff).toString(16).padStart(2, '0');
  return {
    vendor: (vendorId) => ids.vendor(vendorId),
    device: (vendorId, deviceId) => ids.device(vendorId, deviceId),
    className: (code) => {
      const [c, s, p] = [hex2(code >> 16), hex2(code >> 8), hex2(code)];
      return ids.progIfName(c, s, p) ?? ids.subclassName(c, s) ?? ids.className(c);
    },
    subclassName: (code) => {
      const [c, s] = [hex2(code >> 16), hex2(code >> 8)];
      return ids.subclassName(c, s) ?? ids.className(c);
    },
  };
}

let system: PciNames | undefined;

/** The host's database, shared by every driver in the process (read once, on first use). */
export function systemPciNames(): PciNames {
  return (system ??= pciIdsNames());
}

/** No names at all: for tests that must not depend on the host's database. */
export const NO_PCI_NAMES: PciNames = {
  vendor: () => undefined,
  device: () => undefined,
  className: () => undefined,
  subclassName: () => undefined,
};
