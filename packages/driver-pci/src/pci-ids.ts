/**
 * Vendor, device and class names from the PCI ID database (`pci.ids`, Debian's `pci.ids` package,
 * pulled in by `hwdata`), read the way driver-usb reads usb.ids:
 *
 *   8086  Intel Corporation                a vendor: 4 hex digits, two spaces, the name
 *   \t1c2d  6 Series/C200 Series ...       a device of the vendor above: one tab first
 *   \t\t17aa 21ce  ...                     a subsystem line: not used here
 *   C 0c  Serial bus controller            the class section at the end: a class,
 *   \t03  USB controller                   its subclasses (one tab),
 *   \t\t30  XHCI                           and their programming interfaces (two tabs)
 *
 * The file is about 1.3 MB; it is read on the first lookup only, vendors are indexed by line, and a
 * vendor's devices are parsed when first asked for. It is untrusted text like any other input:
 * bounded in size, malformed lines skipped, and what it gives is sanitized by the caller
 * (parse-pci-devices.ts).
 */
import * as fs from 'node:fs';

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

const VENDOR_LINE = /^([0-9a-fA-F]{4}) {2}(.*)$/;
const DEVICE_LINE = /^\t([0-9a-fA-F]{4}) {2}(.*)$/;
const CLASS_LINE = /^C ([0-9a-fA-F]{2}) {2}(.*)$/;
const SUBCLASS_LINE = /^\t([0-9a-fA-F]{2}) {2}(.*)$/;
const PROG_IF_LINE = /^\t\t([0-9a-fA-F]{2}) {2}(.*)$/;

interface VendorEntry {
  readonly name: string;
  readonly start: number;
  readonly end: number;
  devices?: Map<string, string>;
}

interface Index {
  readonly text: string;
  readonly vendors: Map<string, VendorEntry>;
  /** `cc`, `ccss` and `ccsspp` (lowercase hex) to names. */
  readonly classes: Map<string, string>;
}

/** A lazy reader over the first of `paths` that can be read; with none, every lookup is undefined. */
export function pciIdsNames(paths: string | readonly string[] = PCI_IDS_PATHS): PciNames {
  const candidates = typeof paths === 'string' ? [paths] : paths;
  let index: Index | undefined;
  const get = (): Index => (index ??= buildIndex(readFirst(candidates)));
  const hex2 = (n: number) => (n & 0xff).toString(16).padStart(2, '0');
  return {
    vendor: (vendorId) => get().vendors.get(vendorId.toLowerCase())?.name,
    device: (vendorId, deviceId) => {
      const { text, vendors } = get();
      const entry = vendors.get(vendorId.toLowerCase());
      if (entry === undefined) return undefined;
      entry.devices ??= parseDevices(text.slice(entry.start, entry.end));
      return entry.devices.get(deviceId.toLowerCase());
    },
    className: (code) => {
      const { classes } = get();
      const [c, s, p] = [hex2(code >> 16), hex2(code >> 8), hex2(code)];
      return classes.get(c + s + p) ?? classes.get(c + s) ?? classes.get(c);
    },
    subclassName: (code) => {
      const { classes } = get();
      const [c, s] = [hex2(code >> 16), hex2(code >> 8)];
      return classes.get(c + s) ?? classes.get(c);
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

/** One pass over the lines: vendor lines are indexed, device lines skipped, the class section parsed. */
function buildIndex(text: string): Index {
  const vendors = new Map<string, VendorEntry>();
  const classes = new Map<string, string>();
  let open: { id: string; name: string; start: number } | undefined;
  let inClasses = false;
  let cls: string | undefined;
  let sub: string | undefined;
  const close = (end: number) => {
    // The first definition wins, as in lspci; a repeated id does not replace it.
    if (open && !vendors.has(open.id)) vendors.set(open.id, { name: open.name, start: open.start, end });
    open = undefined;
  };
  const setFirst = (key: string, name: string) => {
    if (!classes.has(key)) classes.set(key, name);
  };
  let at = 0;
  while (at < text.length) {
    const newline = text.indexOf('\n', at);
    const next = newline < 0 ? text.length : newline + 1;
    const first = text[at];
    if (first === '#' || first === '\n' || first === '\r') {
      at = next;
      continue;
    }
    const line = text.slice(at, next).replace(/\r?\n$/, '');
    if (first !== '\t') {
      close(at);
      const classLine = CLASS_LINE.exec(line);
      if (classLine) {
        inClasses = true;
        cls = classLine[1].toLowerCase();
        sub = undefined;
        setFirst(cls, classLine[2]);
      } else {
        // Other sections (`X` device types and so on) end the class section; a vendor line
        // reopens the vendor list (the file keeps vendors first, but be lenient).
        inClasses = false;
        cls = undefined;
        const vendor = VENDOR_LINE.exec(line);
        if (vendor) open = { id: vendor[1].toLowerCase(), name: vendor[2], start: next };
      }
    } else if (inClasses && cls !== undefined) {
      const progIf = PROG_IF_LINE.exec(line);
      const subclass = progIf ? undefined : SUBCLASS_LINE.exec(line);
      if (subclass) {
        sub = subclass[1].toLowerCase();
        setFirst(cls + sub, subclass[2]);
      } else if (progIf && sub !== undefined) {
        setFirst(cls + sub + progIf[1].toLowerCase(), progIf[2]);
      }
    }
    at = next;
  }
  close(text.length);
  return { text, vendors, classes };
}

function parseDevices(block: string): Map<string, string> {
  const devices = new Map<string, string>();
  for (const line of block.split('\n')) {
    const m = DEVICE_LINE.exec(line.replace(/\r$/, ''));
    if (m && !devices.has(m[1].toLowerCase())) devices.set(m[1].toLowerCase(), m[2]);
  }
  return devices;
}
