/**
 * Vendor and product names from the USB ID database (`usb.ids`, shipped by hwdata / usbutils):
 *
 *   # comment
 *   05f3  PI Engineering, Inc.          a vendor: 4 hex digits, two spaces, the name
 *   \t0007  Kinesis Advantage PRO ...    a product of the vendor above: one tab first
 *   \t\t00  ...                         an interface line: not used here
 *   C 03  Human Interface Device         later sections (classes, HID usages, ...) start with a keyword
 *
 * The file is about 700 kB and most lookups ask for a handful of vendors, so it is read on the first
 * lookup only, indexed by vendor line, and a vendor's products are parsed when first asked for. The
 * file is treated as untrusted text like any other input: bounded in size, malformed lines skipped,
 * and the names it gives are sanitized by the caller (parse-usb-devices.ts).
 */
import * as fs from 'node:fs';

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

const VENDOR_LINE = /^([0-9a-fA-F]{4}) {2}(.*)$/;
const PRODUCT_LINE = /^\t([0-9a-fA-F]{4}) {2}(.*)$/;

interface VendorEntry {
  readonly name: string;
  /** The text of the vendor's product lines, between its line and the next top-level line. */
  readonly start: number;
  readonly end: number;
  products?: Map<string, string>;
}

/** A lazy reader over the first of `paths` that can be read; with none, every lookup is undefined. */
export function usbIdsNames(paths: string | readonly string[] = USB_IDS_PATHS): UsbNames {
  const candidates = typeof paths === 'string' ? [paths] : paths;
  let text = '';
  let vendors: Map<string, VendorEntry> | undefined;
  const index = (): Map<string, VendorEntry> => {
    if (vendors === undefined) {
      text = readFirst(candidates);
      vendors = indexVendors(text);
    }
    return vendors;
  };
  return {
    vendor: (vendorId) => index().get(vendorId.toLowerCase())?.name,
    product: (vendorId, productId) => {
      const entry = index().get(vendorId.toLowerCase());
      if (entry === undefined) return undefined;
      entry.products ??= parseProducts(text.slice(entry.start, entry.end));
      return entry.products.get(productId.toLowerCase());
    },
  };
}

let system: UsbNames | undefined;

/** The host's database, shared by every driver in the process (read once, on first use). */
export function systemUsbNames(): UsbNames {
  return (system ??= usbIdsNames());
}

function readFirst(paths: readonly string[]): string {
  for (const file of paths) {
    try {
      const stat = fs.statSync(file);
      if (!stat.isFile() || stat.size > MAX_FILE_BYTES) continue;
      return fs.readFileSync(file, 'utf8');
    } catch {
      // Missing or unreadable: try the next location.
    }
  }
  return '';
}

/** One pass over the top-level lines; product lines are skipped, not parsed. */
function indexVendors(text: string): Map<string, VendorEntry> {
  const vendors = new Map<string, VendorEntry>();
  let open: { id: string; name: string; start: number } | undefined;
  const close = (end: number) => {
    // The first definition wins, as in lsusb; a repeated id does not replace it.
    if (open && !vendors.has(open.id)) vendors.set(open.id, { name: open.name, start: open.start, end });
    open = undefined;
  };
  let at = 0;
  while (at < text.length) {
    const newline = text.indexOf('\n', at);
    const next = newline < 0 ? text.length : newline + 1;
    const first = text[at];
    // Indented lines belong to the open vendor; comments and blank lines do not end it.
    if (first !== '\t' && first !== '#' && first !== '\n' && first !== '\r') {
      close(at);
      const m = VENDOR_LINE.exec(text.slice(at, next).replace(/\r?\n$/, ''));
      if (m) open = { id: m[1].toLowerCase(), name: m[2], start: next };
    }
    at = next;
  }
  close(text.length);
  return vendors;
}

function parseProducts(block: string): Map<string, string> {
  const products = new Map<string, string>();
  for (const line of block.split('\n')) {
    const m = PRODUCT_LINE.exec(line.replace(/\r$/, ''));
    if (m && !products.has(m[1].toLowerCase())) products.set(m[1].toLowerCase(), m[2]);
  }
  return products;
}
