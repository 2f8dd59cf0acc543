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
 * on the machine, so nothing is parsed up front: the file's bytes are read on the first lookup and
 * kept as they are (not decoded), a vendor's line is found by a native search for its bytes, a block's
 * end by a regular expression over the block alone, and only the names found are decoded; what was
 * found is cached per vendor, device and class. The first definition of an id wins, as in lspci and
 * lsusb; hex digits match in either case.
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
  return new IdsReader(Buffer.concat([NEWLINE, Buffer.from(text, 'utf8')]));
}

const NEWLINE = Buffer.from('\n');

/** An id in lowercase; undefined if it is not `digits` hex digits. */
function hexId(id: string, digits: number): string | undefined {
  return id.length === digits && /^[0-9a-fA-F]+$/.test(id) ? id.toLowerCase() : undefined;
}

/** A lowercase id as a regular expression source matching it in either case. */
function eitherCase(id: string): string {
  let source = '';
  for (const c of id) source += c >= 'a' ? `[${c}${c.toUpperCase()}]` : c;
  return source;
}

/** Every spelling of `text` with its letters a-f (the hex digits) in either case, the lowercase first. */
function caseVariants(text: string): string[] {
  let variants = [''];
  for (const c of text) {
    const lower = variants.map((v) => v + c);
    variants = c >= 'a' && c <= 'f' ? [...lower, ...variants.map((v) => v + c.toUpperCase())] : lower;
  }
  return variants;
}

/** A line that ends a vendor's or a class's block: not indented, not a comment, not blank. */
const TOP_LEVEL = /\n[^\t#\n\r]/;
/** A line that ends a device's block: a top-level line or the next device (one tab, then not a tab). */
const NEXT_DEVICE = /\n(?:[^\t#\n\r]|\t[^\t])/;
/** How much of a block is decoded at a time to find its end (most blocks are far shorter). */
const CHUNK = 64 * 1024;
/** What `.` does not match: a line with one of these in its name is not a well-formed line. */
const LINE_BREAKS = /[\r\u2028\u2029]/;

interface Line {
  readonly name: string;
  /** Where the line starts. */
  readonly start: number;
  /** Where the lines under it start. */
  readonly body: number;
}

interface Block extends Line {
  /** Where the lines under it end (the start of the line that ends the block), found when needed. */
  end?: number;
}

interface VendorEntry extends Block {
  /** How far the block is known to run (while its end is not known): no line before ends it. */
  known: number;
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
  private firstClass?: number;

  /** The file's bytes behind a `\n`, so that every line follows one; lines start at 1 or later. */
  constructor(private readonly data: Buffer) {}

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
    const sv = hexId(subvendorId, 4);
    const sd = hexId(subdeviceId, 4);
    if (device === undefined || sv === undefined || sd === undefined) return undefined;
    const key = `${sv} ${sd}`;
    let name = device.subsystems.get(key);
    if (name === undefined) {
      device.end ??= this.endOf(NEXT_DEVICE, device.body);
      // A device's block is short: decoded whole and searched (8 hex digits have too many spellings).
      name = this.findLineIn(`\t\t${eitherCase(sv)} ${eitherCase(sd)}  `, device.body, device.end)?.name ?? null;
      device.subsystems.set(key, name);
    }
    return name ?? undefined;
  }

  className(classId: string): string | undefined {
    return this.classEntry(classId)?.name;
  }

  subclassName(classId: string, subclassId: string): string | undefined {
    const subclass = hexId(subclassId, 2);
    return subclass === undefined ? undefined : this.classEntry(classId)?.names.get(subclass);
  }

  progIfName(classId: string, subclassId: string, progIfId: string): string | undefined {
    const subclass = hexId(subclassId, 2);
    const progIf = hexId(progIfId, 2);
    if (subclass === undefined || progIf === undefined) return undefined;
    return this.classEntry(classId)?.names.get(subclass + progIf);
  }

  private vendorEntry(vendorId: string): VendorEntry | undefined {
    const id = hexId(vendorId, 4);
    if (id === undefined) return undefined;
    let entry = this.vendors.get(id);
    if (entry === undefined) {
      const line = this.findLine(`${id}  `, 1, this.data.length);
      entry = line ? { ...line, known: line.body, devices: new Map() } : null;
      this.vendors.set(id, entry);
    }
    return entry ?? undefined;
  }

  private deviceEntry(vendor: VendorEntry, deviceId: string): DeviceEntry | undefined {
    const id = hexId(deviceId, 4);
    if (id === undefined) return undefined;
    let entry = vendor.devices.get(id);
    if (entry === undefined) {
      // Searched for up to the block's end if known, else further, and then the block checked to run
      // that far: a device that is not in the file costs no look for the block's end, one near the
      // start of a long block (Intel's is 370 kB) a short one.
      const line = this.findLine(`\t${id}  `, vendor.body, vendor.end ?? this.data.length);
      entry = line && this.runsTo(vendor, line.start) ? { ...line, subsystems: new Map() } : null;
      vendor.devices.set(id, entry);
    }
    return entry ?? undefined;
  }

  /** Whether the vendor's block runs to the line starting at `start` (within it, or its end found). */
  private runsTo(vendor: VendorEntry, start: number): boolean {
    if (vendor.end !== undefined) return start < vendor.end;
    if (start <= vendor.known) return true;
    const end = this.firstLine(TOP_LEVEL, vendor.known, start);
    if (end >= 0) {
      vendor.end = end;
      return false;
    }
    vendor.known = start;
    return true;
  }

  /**
   * A class, with its subclasses and programming interfaces. A class defined twice (never in the
   * real files) is read as one, in file order, the first definition of each id winning.
   */
  private classEntry(classId: string): ClassEntry | undefined {
    const id = hexId(classId, 2);
    if (id === undefined) return undefined;
    let entry = this.classes.get(id);
    if (entry === undefined) {
      entry = null;
      for (let from = this.classesStart(); from > 0;) {
        const line = this.findLine(`C ${id}  `, from, this.data.length);
        if (line === undefined) break;
        const end = this.endOf(TOP_LEVEL, line.body);
        entry ??= { name: line.name, names: new Map() };
        this.readClassBody(line.body, end, entry.names);
        from = end;
      }
      this.classes.set(id, entry);
    }
    return entry ?? undefined;
  }

  /**
   * Where the first class line starts (-1 for none): no class is defined before it, so a class is
   * looked for from there, not through the vendors' megabyte before the class section each time.
   */
  private classesStart(): number {
    if (this.firstClass === undefined) {
      const at = this.data.indexOf('\nC ', 0, 'latin1');
      this.firstClass = at < 0 ? -1 : at + 1;
    }
    return this.firstClass;
  }

  /** A class's lines (a few dozen at most in the real files), read one by one. */
  private readClassBody(from: number, to: number, names: Map<string, string>): void {
    const text = this.data.toString('latin1', from, to);
    let subclass: string | undefined;
    for (let at = 0; at < text.length;) {
      const newline = text.indexOf('\n', at);
      const lineEnd = newline < 0 ? text.length : newline;
      const line = text.slice(at, lineEnd);
      const progIf = /^\t\t([0-9a-fA-F]{2}) {2}/.exec(line);
      const sub = progIf ? null : /^\t([0-9a-fA-F]{2}) {2}/.exec(line);
      const match = progIf ?? sub;
      const name = match ? this.decodeName(from + at + match[0].length, from + lineEnd) : undefined;
      const id = sub
        ? sub[1].toLowerCase()
        : progIf && subclass !== undefined
          ? subclass + progIf[1].toLowerCase()
          : undefined;
      if (id !== undefined && name !== undefined) {
        if (sub) subclass = id;
        if (!names.has(id)) names.set(id, name);
      }
      at = lineEnd + 1;
    }
  }

  /**
   * The first well-formed line in [from, to) (both line starts) that starts with `prefix` (lowercase;
   * its letters a-f match in either case), found by native searches of the bytes.
   */
  private findLine(prefix: string, from: number, to: number): Line | undefined {
    const variants = caseVariants('\n' + prefix);
    for (;;) {
      // The earliest of the spellings: the lowercase one first (the real files'), then the others
      // only before it.
      const scope = this.data.subarray(from - 1, to);
      let found = -1;
      for (const variant of variants) {
        const hit = (found < 0 ? scope : scope.subarray(0, found + variant.length - 1)).indexOf(variant, 0, 'latin1');
        if (hit >= 0) found = hit;
      }
      if (found < 0) return undefined;
      const line = this.lineAt(from + found, from + found + prefix.length);
      if (line !== undefined) return line;
      from += found + 1; // past the malformed line's first byte
    }
  }

  /** The same over a short block, decoded whole and searched by a regular expression (`prefix`: its source). */
  private findLineIn(prefix: string, from: number, to: number): Line | undefined {
    const text = this.data.toString('latin1', from - 1, to);
    const pattern = new RegExp(`\\n${prefix}`, 'g');
    for (let match = pattern.exec(text); match !== null; match = pattern.exec(text)) {
      const line = this.lineAt(from + match.index, from - 1 + match.index + match[0].length);
      if (line !== undefined) return line;
    }
    return undefined;
  }

  /** The line at `start`, its name from `nameStart` to its end; undefined if malformed. */
  private lineAt(start: number, nameStart: number): Line | undefined {
    const newline = this.data.indexOf(0x0a, nameStart);
    const end = newline < 0 ? this.data.length : newline;
    const name = this.decodeName(nameStart, end);
    return name === undefined ? undefined : { name, start, body: Math.min(end + 1, this.data.length) };
  }

  /** A name's bytes as UTF-8, without the line's `\r`; undefined if it is not one line. */
  private decodeName(start: number, end: number): string | undefined {
    const name = this.data.toString('utf8', start, end > start && this.data[end - 1] === 0x0d ? end - 1 : end);
    return LINE_BREAKS.test(name) ? undefined : name;
  }

  /** Where the block whose lines start at `from` ends: the start of the first line `ending` matches. */
  private endOf(ending: RegExp, from: number): number {
    const end = this.firstLine(ending, from, this.data.length);
    return end < 0 ? this.data.length : end;
  }

  /**
   * The start of the first line in [from, to) (`from` a line start) that `ending` (at most three
   * characters from the `\n` before the line) matches, decoding a chunk at a time; -1 if none.
   */
  private firstLine(ending: RegExp, from: number, to: number): number {
    for (let at = from - 1; at < to; at += CHUNK - 2) {
      const chunk = this.data.toString('latin1', at, Math.min(at + CHUNK, to));
      const match = ending.exec(chunk);
      if (match !== null) return at + match.index + 1;
      if (at + CHUNK >= to) break;
    }
    return -1;
  }
}

/** The first candidate that is a regular file within the bound, its bytes behind a `\n`; else just `\n`. */
function readFirst(paths: readonly string[], maxBytes: number): Buffer {
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
      return buffer.subarray(0, length);
    } catch {
      // Missing or unreadable: try the next location.
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }
  return NEWLINE;
}
