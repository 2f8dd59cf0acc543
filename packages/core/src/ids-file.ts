/**
 * The ID databases' file format, shared by pci.ids and usb.ids (hwdata, pciutils, usbutils):
 *
 *   # comment                              comments and blank lines are skipped anywhere
 *   8086  Intel Corporation                a vendor: 4 hex digits, two spaces, the name
 *   \t1c2d  6 Series/C200 Series ...       a device (usb.ids: a product) of the vendor above: one tab
 *   \t\t17aa 21ce  ThinkPad T520           a subsystem of the device above: two tabs (pci.ids)
 *   C 0c  Serial bus controller            a class section: a class,
 *   \t03  USB controller                   its subclasses (one tab),
 *   \t\t30  XHCI                           and their programming interfaces (two tabs)
 *
 * A block (a vendor's devices, a device's subsystems, a class's subclasses) runs to the next line
 * that is none of its own: the next top-level line (anything not indented, not a comment, not
 * blank), or for a device the next device.
 *
 * The files are large (pci.ids 1.3 MB, usb.ids 0.7 MB) and a listing needs the few vendors present
 * on the machine, so nothing is parsed up front: the file is read on the first lookup, kept as one
 * byte per character (latin1, so that character offsets are byte offsets), and a vendor's line is
 * found by a native search for it; what was found is cached per vendor, device and class. The first
 * definition of an id wins, as in lspci and lsusb; hex digits match in either case.
 *
 * The file is untrusted input like any other: read only if it is a regular file within a size bound,
 * searched only by linear native scans (no line is split, however long), a line that does not match
 * the format is skipped, and the names are decoded as UTF-8 but not sanitized: callers sanitize them
 * in their parsers (`sanitizeText`), which also bounds their length.
 */
import * as fs from 'node:fs';

/** Lookups in one ID file; every id is hex in either case, and anything else finds nothing. */
export interface IdsFile {
  /** The vendor's name for a 4-digit hex id. */
  vendor(vendorId: string): string | undefined;
  /** The device's (usb.ids: the product's) name under its vendor. */
  device(vendorId: string, deviceId: string): string | undefined;
  /** A subsystem's name under a device (pci.ids: subvendor and subdevice, 4 hex digits each). */
  subsystem(vendorId: string, deviceId: string, subvendorId: string, subdeviceId: string): string | undefined;
  /** The name of a class (`C 0c`, 2 hex digits). */
  className(classId: string): string | undefined;
  /** The name of a subclass under its class. */
  subclassName(classId: string, subclassId: string): string | undefined;
  /** The name of a programming interface (usb.ids: a protocol) under its class and subclass. */
  progIfName(classId: string, subclassId: string, progIfId: string): string | undefined;
}

export interface IdsFileOptions {
  /** Files larger than this are not ID files and are ignored (default 16 MiB). */
  readonly maxBytes?: number;
}

/** Far above the real files (pci.ids 1.3 MB); larger is not an ID file. */
export const MAX_IDS_FILE_BYTES = 16 * 1024 * 1024;

/**
 * A lazy reader over the first of `paths` that is a readable regular file within the size bound; it
 * reads nothing until the first lookup, then keeps the file. With none, every lookup is undefined.
 */
export function idsFile(paths: string | readonly string[], options: IdsFileOptions = {}): IdsFile {
  const candidates = typeof paths === 'string' ? [paths] : paths;
  const maxBytes = options.maxBytes ?? MAX_IDS_FILE_BYTES;
  let reader: IdsReader | undefined;
  const get = (): IdsReader => (reader ??= new IdsReader(readFirst(candidates, maxBytes)));
  return {
    vendor: (v) => get().vendor(v),
    device: (v, d) => get().device(v, d),
    subsystem: (v, d, sv, sd) => get().subsystem(v, d, sv, sd),
    className: (c) => get().className(c),
    subclassName: (c, s) => get().subclassName(c, s),
    progIfName: (c, s, p) => get().progIfName(c, s, p),
  };
}

/** The same lookups over text already in memory (a test's fixture, an embedded database). */
export function idsText(text: string): IdsFile {
  return new IdsReader('\n' + Buffer.from(text, 'utf8').toString('latin1'));
}

/** An id as a regular expression source matching it in either case; undefined if it is not `digits` hex digits. */
function hexSource(id: string, digits: number): string | undefined {
  if (id.length !== digits || !/^[0-9a-fA-F]+$/.test(id)) return undefined;
  let source = '';
  for (const c of id.toLowerCase()) source += c >= 'a' ? `[${c}${c.toUpperCase()}]` : c;
  return source;
}

/** A line that ends a vendor's or a class's block: not indented, not a comment, not blank. */
const TOP_LEVEL = /\n[^\t#\n\r]/g;
/** A line that ends a device's block: a top-level line or the next device (one tab, then not a tab). */
const NEXT_DEVICE = /\n(?:[^\t#\n\r]|\t[^\t])/g;
/** What `.` does not match: a line with one of these in its name is not a well-formed line. */
const LINE_BREAKS = /[\r\u2028\u2029]/;

interface Line {
  readonly name: string;
  /** Where the lines under it start. */
  readonly body: number;
}

interface Block extends Line {
  /** Where the lines under it end (the start of the line that ends the block), found when needed. */
  end?: number;
}

interface VendorEntry extends Block {
  readonly devices: Map<string, DeviceEntry | null>;
}

interface DeviceEntry extends Block {
  readonly subsystems: Map<string, string | null>;
}

interface ClassEntry {
  readonly name: string;
  /** `ss` and `sspp` (lowercase hex) to names, the first definition winning. */
  readonly names: Map<string, string>;
}

class IdsReader implements IdsFile {
  private readonly vendors = new Map<string, VendorEntry | null>();
  private readonly classes = new Map<string, ClassEntry | null>();

  /** The file, one character per byte, behind a `\n` so that every line follows one. */
  constructor(private readonly text: string) {}

  vendor(vendorId: string): string | undefined {
    return this.vendorEntry(vendorId)?.name;
  }

  device(vendorId: string, deviceId: string): string | undefined {
    const vendor = this.vendorEntry(vendorId);
    return vendor === undefined ? undefined : this.deviceEntry(vendor, deviceId)?.name;
  }

  subsystem(vendorId: string, deviceId: string, subvendorId: string, subdeviceId: string): string | undefined {
    const vendor = this.vendorEntry(vendorId);
    const device = vendor === undefined ? undefined : this.deviceEntry(vendor, deviceId);
    const sv = hexSource(subvendorId, 4);
    const sd = hexSource(subdeviceId, 4);
    if (device === undefined || sv === undefined || sd === undefined) return undefined;
    const key = `${subvendorId} ${subdeviceId}`.toLowerCase();
    let name = device.subsystems.get(key);
    if (name === undefined) {
      device.end ??= this.endOf(NEXT_DEVICE, device.body);
      name = this.findLine(`\t\t${sv} ${sd}  `, device.body, device.end)?.name ?? null;
      device.subsystems.set(key, name);
    }
    return name ?? undefined;
  }

  className(classId: string): string | undefined {
    return this.classEntry(classId)?.name;
  }

  subclassName(classId: string, subclassId: string): string | undefined {
    if (hexSource(subclassId, 2) === undefined) return undefined;
    return this.classEntry(classId)?.names.get(subclassId.toLowerCase());
  }

  progIfName(classId: string, subclassId: string, progIfId: string): string | undefined {
    if (hexSource(subclassId, 2) === undefined || hexSource(progIfId, 2) === undefined) return undefined;
    return this.classEntry(classId)?.names.get((subclassId + progIfId).toLowerCase());
  }

  private vendorEntry(vendorId: string): VendorEntry | undefined {
    const source = hexSource(vendorId, 4);
    if (source === undefined) return undefined;
    const key = vendorId.toLowerCase();
    let entry = this.vendors.get(key);
    if (entry === undefined) {
      const line = this.findLine(`${source}  `, 0, this.text.length);
      entry = line ? { ...line, devices: new Map() } : null;
      this.vendors.set(key, entry);
    }
    return entry ?? undefined;
  }

  private deviceEntry(vendor: VendorEntry, deviceId: string): DeviceEntry | undefined {
    const source = hexSource(deviceId, 4);
    if (source === undefined) return undefined;
    const key = deviceId.toLowerCase();
    let entry = vendor.devices.get(key);
    if (entry === undefined) {
      vendor.end ??= this.endOf(TOP_LEVEL, vendor.body);
      const line = this.findLine(`\t${source}  `, vendor.body, vendor.end);
      entry = line ? { ...line, subsystems: new Map() } : null;
      vendor.devices.set(key, entry);
    }
    return entry ?? undefined;
  }

  /**
   * A class, with its subclasses and programming interfaces. A class defined twice (never in the
   * real files) is read as one, in file order, the first definition of each id winning.
   */
  private classEntry(classId: string): ClassEntry | undefined {
    const source = hexSource(classId, 2);
    if (source === undefined) return undefined;
    const key = classId.toLowerCase();
    let entry = this.classes.get(key);
    if (entry === undefined) {
      entry = null;
      let from = 0;
      for (;;) {
        const line = this.findLine(`C ${source}  `, from, this.text.length);
        if (line === undefined) break;
        const end = this.endOf(TOP_LEVEL, line.body);
        entry ??= { name: line.name, names: new Map() };
        this.readClassBody(line.body, end, entry.names);
        from = end;
      }
      this.classes.set(key, entry);
    }
    return entry ?? undefined;
  }

  /** A class's lines (a few dozen at most in the real files), read one by one. */
  private readClassBody(from: number, to: number, names: Map<string, string>): void {
    const setFirst = (id: string, name: string) => {
      if (!names.has(id)) names.set(id, name);
    };
    let subclass: string | undefined;
    for (let at = from; at < to; ) {
      const newline = this.text.indexOf('\n', at);
      const lineEnd = newline < 0 || newline >= to ? to : newline;
      const line = this.text.slice(at, lineEnd);
      const progIf = /^\t\t([0-9a-fA-F]{2}) {2}/.exec(line);
      const sub = progIf ? null : /^\t([0-9a-fA-F]{2}) {2}/.exec(line);
      const match = progIf ?? sub;
      const name = match ? decodeName(line.slice(match[0].length)) : undefined;
      if (sub && name !== undefined) {
        subclass = sub[1].toLowerCase();
        setFirst(subclass, name);
      } else if (progIf && name !== undefined && subclass !== undefined) {
        setFirst(subclass + progIf[1].toLowerCase(), name);
      }
      at = lineEnd + 1;
    }
  }

  /**
   * The first well-formed line in [from, to) (both line starts) that starts with `prefix` (a regular
   * expression source): its name and where the lines under it start.
   */
  private findLine(prefix: string, from: number, to: number): Line | undefined {
    const pattern = new RegExp(`\\n${prefix}`, 'g');
    pattern.lastIndex = Math.max(0, from - 1);
    for (let match = pattern.exec(this.text); match !== null; match = pattern.exec(this.text)) {
      if (match.index + 1 >= to) return undefined;
      const start = match.index + match[0].length;
      const newline = this.text.indexOf('\n', start);
      const end = newline < 0 ? this.text.length : newline;
      const name = decodeName(this.text.slice(start, end));
      if (name !== undefined) return { name, body: newline < 0 ? this.text.length : newline + 1 };
    }
    return undefined;
  }

  /** Where the block whose lines start at `from` ends: the start of the first line `ending` matches. */
  private endOf(ending: RegExp, from: number): number {
    ending.lastIndex = Math.max(0, from - 1);
    const match = ending.exec(this.text);
    return match === null ? this.text.length : match.index + 1;
  }
}

/** A name's bytes (one per character) as UTF-8, without the line's `\r`; undefined if it is not one line. */
function decodeName(bytes: string): string | undefined {
  const name = Buffer.from(bytes.endsWith('\r') ? bytes.slice(0, -1) : bytes, 'latin1').toString('utf8');
  return LINE_BREAKS.test(name) ? undefined : name;
}

/** The first candidate that is a regular file within the bound, as latin1 behind a `\n`; else `\n`. */
function readFirst(paths: readonly string[], maxBytes: number): string {
  for (const file of paths) {
    let fd: number | undefined;
    try {
      // Non-blocking, so that a FIFO put where the file was expected cannot hang the open.
      fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      const stat = fs.fstatSync(fd);
      if (!stat.isFile() || stat.size > maxBytes) continue;
      // Read no more than the size seen (the file may grow meanwhile), behind the leading newline.
      const buffer = Buffer.allocUnsafe(stat.size + 1);
      buffer[0] = 0x0a;
      let length = 1;
      while (length < buffer.length) {
        const read = fs.readSync(fd, buffer, length, buffer.length - length, null);
        if (read === 0) break;
        length += read;
      }
      return buffer.toString('latin1', 0, length);
    } catch {
      // Missing or unreadable: try the next location.
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }
  return '\n';
}
