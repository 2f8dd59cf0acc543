/**
 * Vendor and product names from the USB ID database (`usb.ids`, shipped by hwdata / usbutils):
 *
 *   # comment
 *   05f3  PI Engineering, Inc.          a vendor: 4 hex digits, two spaces, the name
 *   \t0007  Kinesis Advantage PRO ...    a product of the vendor above: one tab first
 *   \t\t00  ...                         an interface line: not used here
 *   C 03  Human Interface Device         later sections (classes, HID usages, ...) start with a keyword
 *
 * The format is pci.ids' too, and core's `idsFile` reads both. The file is about 700 kB and most
 * lookups ask for a handful of vendors, so it is read on the first lookup only, and only the vendors
 * and products asked for are looked up (and cached). The file is treated as untrusted text like any
 * other input: bounded in size, malformed lines skipped, and the names it gives are sanitized by the
 * caller (parse-usb-devices.ts).
 */
import { type IdsFile, idsFile } from '@devgate/core';

export interface UsbNames {
  /** The vendor's name for a 4-digit lowercase hex id, if the database has it. */
  vendor(vendorId: string): string | undefined;
  /** The product's name under its vendor, if the database has it. */
  product(vendorId: string, productId: string): string | undefined;
}

/** Where distributions install the database: hwdata first, then usbutils' older location. */
export const USB_IDS_PATHS: readonly string[] = ['/usr/share/hwdata/usb.ids', '/usr/share/misc/usb.ids'];

/** Far above the real file (under 1 MB); anything larger is not a usb.ids and is ignored. */
const MAX_FILE_BYTES = 8 * 1024 * 1024;

/** A lazy reader over the first of `paths` that can be read; with none, every lookup is undefined. */
export function usbIdsNames(paths: string | readonly string[] = USB_IDS_PATHS): UsbNames {
  return usbNamesOf(idsFile(paths, { maxBytes: MAX_FILE_BYTES }));
}

/** UsbNames over an ID file already open (or text: `idsText`). */
export function usbNamesOf(ids: IdsFile): UsbNames {
  return {
    vendor: (vendorId) => ids.vendor(vendorId),
    product: (vendorId, productId) => ids.device(vendorId, productId),
  };
}

let system: UsbNames | undefined;

/** The host's database, shared by every driver in the process (read once, on first use). */
export function systemUsbNames(): UsbNames {
  return (system ??= usbIdsNames());
}
