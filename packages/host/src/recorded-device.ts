/**
 * The device record the recording parsers produce, and the limits and checks they share. A
 * recorded device is a plain `RawDeviceRecord` that also lets tools enumerate what it holds (the
 * text and binary attributes, sysfs links, devlinks), so a fake sysfs can be written from it.
 */
import * as fs from 'node:fs';
import { Errors, type RawDeviceRecord } from '@devgate/core';

/** Bounds for untrusted recordings. A whole-machine export-db dump is about 300 KB. */
export const RECORDING_LIMITS = {
  maxFileBytes: 64 * 1024 * 1024,
  /** A sysfs text attribute is at most a page (4 KiB), 16 KiB once escaped; hex doubles binaries. */
  maxLineChars: 256 * 1024,
  maxRecords: 200_000,
  maxLinesPerRecord: 20_000,
  maxDevpathChars: 4096,
} as const;

export interface RecordedDeviceInit {
  readonly devpath: string;
  readonly subsystem: string;
  readonly properties: Readonly<Record<string, string>>;
  /** Text attributes, already unescaped and without the trailing newline sysfs adds. */
  readonly attributes?: ReadonlyMap<string, string> | Readonly<Record<string, string>>;
  readonly binaryAttributes?: ReadonlyMap<string, Uint8Array>;
  /** Sysfs links inside the device directory (`driver`, `port`, ...): name -> raw readlink() target. */
  readonly links?: ReadonlyMap<string, string>;
  /** udev devlinks relative to /dev (`disk/by-id/...`). */
  readonly devlinks?: readonly string[];
  /** The device node relative to /dev (`bus/usb/001/009`, `sda`). */
  readonly devnode?: string;
  /** umockdev's recorded node contents (USB descriptors), when present. */
  readonly devnodeContents?: Uint8Array;
}

/**
 * A device from a recording. `attribute()` answers text attributes only: a binary attribute
 * (umockdev `H:`) gives undefined there, as drivers must not parse bytes as text, and its bytes are
 * in `binaryAttributes`.
 */
export class RecordedDevice implements RawDeviceRecord {
  readonly devpath: string;
  readonly subsystem: string;
  readonly properties: Readonly<Record<string, string>>;
  readonly attributes: ReadonlyMap<string, string>;
  readonly binaryAttributes: ReadonlyMap<string, Uint8Array>;
  readonly links: ReadonlyMap<string, string>;
  readonly devlinks: readonly string[];
  readonly devnode: string | undefined;
  readonly devnodeContents: Uint8Array | undefined;

  constructor(init: RecordedDeviceInit, pool?: StringPool) {
    const own = pool ? (text: string) => pool.get(text) : (text: string) => text;
    this.devpath = own(init.devpath);
    this.subsystem = own(init.subsystem);
    // Object.fromEntries defines own properties, so a key like `__proto__` stays a plain key.
    this.properties = Object.freeze(
      Object.fromEntries(Object.entries(init.properties).map(([key, value]) => [key, own(value)])),
    );
    // A recording of 10,000 devices mostly has no attributes or links: one shared empty map each.
    const attributes = init.attributes instanceof Map ? init.attributes : Object.entries(init.attributes ?? {});
    this.attributes = sizeOf(attributes) > 0 ? new Map(attributes) : EMPTY_MAP;
    this.binaryAttributes = sizeOf(init.binaryAttributes) > 0 ? new Map(init.binaryAttributes) : EMPTY_MAP;
    this.links = sizeOf(init.links) > 0 ? new Map(init.links) : EMPTY_MAP;
    this.devlinks = init.devlinks && init.devlinks.length > 0 ? Object.freeze(init.devlinks.map(own)) : NO_DEVLINKS;
    this.devnode = init.devnode === undefined ? undefined : own(init.devnode);
    this.devnodeContents = init.devnodeContents;
  }

  attribute(name: string): string | undefined {
    return this.attributes.get(name);
  }

  /** A recorded sysfs link's raw target (umockdev `L:` lines). */
  link(name: string): string | undefined {
    return this.links.get(name);
  }

  /** Names directly inside a subdirectory (`power` -> `control`, ...), from the recorded attributes and links. */
  entries(name: string): readonly string[] | undefined {
    const prefix = name === '' ? '' : name.replace(/\/+$/, '') + '/';
    const found = new Set<string>();
    for (const key of [...this.attributes.keys(), ...this.binaryAttributes.keys(), ...this.links.keys()]) {
      if (key.startsWith(prefix) && key.length > prefix.length) found.add(key.slice(prefix.length).split('/')[0]);
    }
    return found.size > 0 ? [...found].sort() : undefined;
  }
}

const EMPTY_MAP: ReadonlyMap<string, never> = new Map<string, never>();
const NO_DEVLINKS: readonly string[] = Object.freeze([]);

function sizeOf(entries: ReadonlyMap<string, unknown> | readonly unknown[] | undefined): number {
  if (entries === undefined) return 0;
  return 'size' in entries ? entries.size : entries.length;
}

/**
 * The strings of one recording, each kept once: a value repeated by 10,000 devices (`usb_device`,
 * a vendor's name) is one string, and no value keeps the whole recording's text alive (a value cut
 * from it would be a slice of it). Per recording, so nothing outlives what it was loaded for.
 */
export class StringPool {
  private readonly strings = new Map<string, string>();

  get(text: string): string {
    let kept = this.strings.get(text);
    if (kept === undefined) {
      // A copy of its own (JSON's round trip is the cheapest way to a string that is not a slice).
      kept = text.length >= 13 ? (JSON.parse(JSON.stringify(text)) as string) : text;
      this.strings.set(kept, kept);
    }
    return kept;
  }
}

export function isRecordedDevice(record: RawDeviceRecord): record is RecordedDevice {
  return record instanceof RecordedDevice;
}

/** The coded error every parser throws; `line` is 1-based. */
export function unreadable(file: string, reason: string, line?: number): Error {
  return Errors.recordingUnreadable({ file, reason: line === undefined ? reason : `line ${line}: ${reason}` });
}

/** `/devices/...` with no empty, `.` or `..` segments and no NUL: safe to join under a sysfs root. */
export function isSafeDevpath(devpath: string): boolean {
  if (!devpath.startsWith('/devices/') || devpath.length > RECORDING_LIMITS.maxDevpathChars) return false;
  if (devpath.includes('\0')) return false;
  return devpath
    .slice(1)
    .split('/')
    .every((segment) => segment !== '' && segment !== '.' && segment !== '..');
}

/** A relative path with no empty, `.` or `..` segments: attribute, link, node and devlink names. */
export function isSafeRelativePath(name: string): boolean {
  return (
    name.length > 0 &&
    name.length <= 1024 &&
    !name.includes('\0') &&
    name.split('/').every((part) => part !== '' && part !== '.' && part !== '..')
  );
}

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g;

/** A line quoted in an error message: bounded, with control characters made visible. */
export function preview(line: string): string {
  const visible = line.replace(CONTROL, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return visible.length > 60 ? visible.slice(0, 60) + '…' : visible;
}

/** Subsystem names become path components (`sys/bus/<subsystem>`), so keep them to what the kernel uses. */
export function isSafeSubsystem(subsystem: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$/.test(subsystem);
}

/**
 * Splits recording text into lines with 1-based numbers, enforcing the size limits. CRLF line
 * ends are accepted (hand-edited files); a NUL byte means the input is not a text recording.
 */
export function recordingLines(text: string, file: string): string[] {
  if (text.length > RECORDING_LIMITS.maxFileBytes) {
    throw unreadable(file, `larger than ${RECORDING_LIMITS.maxFileBytes} bytes`);
  }
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.length > RECORDING_LIMITS.maxLineChars) {
      throw unreadable(file, `line longer than ${RECORDING_LIMITS.maxLineChars} characters`, i + 1);
    }
    if (line.includes('\0')) throw unreadable(file, 'NUL byte: not a text recording', i + 1);
    if (line.endsWith('\r')) lines[i] = line.slice(0, -1);
  }
  return lines;
}

export interface NumberedLine {
  /** 1-based, for error messages. */
  readonly no: number;
  readonly text: string;
}

/**
 * Device records: runs of lines separated by blank (or whitespace-only) lines, each line with its
 * number. Lines for which `skip` is true (comments) are neither content nor separators.
 */
export function paragraphs(
  lines: readonly string[],
  file: string,
  skip: (line: string) => boolean = () => false,
): NumberedLine[][] {
  const result: NumberedLine[][] = [];
  let current: NumberedLine[] | undefined;
  lines.forEach((text, i) => {
    if (skip(text)) return;
    if (text.trim() === '') {
      current = undefined;
      return;
    }
    if (!current) {
      if (result.length >= RECORDING_LIMITS.maxRecords) {
        throw unreadable(file, `more than ${RECORDING_LIMITS.maxRecords} device records`, i + 1);
      }
      current = [];
      result.push(current);
    }
    if (current.length >= RECORDING_LIMITS.maxLinesPerRecord) {
      throw unreadable(file, `more than ${RECORDING_LIMITS.maxLinesPerRecord} lines in one device record`, i + 1);
    }
    current.push({ no: i + 1, text });
  });
  return result;
}

/** Reads a recording file, refusing oversized ones before reading them. */
export function readRecordingFile(file: string): Buffer {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (error) {
    throw unreadable(file, (error as Error).message);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw unreadable(file, 'not a regular file');
    if (stat.size > RECORDING_LIMITS.maxFileBytes) {
      throw unreadable(file, `larger than ${RECORDING_LIMITS.maxFileBytes} bytes`);
    }
    return fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The `P: /devices/...` line every record of both text formats opens with: its device path, checked. */
export function openingDevpath(lines: readonly NumberedLine[], file: string, pattern: RegExp): string {
  const start = lines[0].no;
  const first = pattern.exec(lines[0].text);
  if (!first || first[1] !== 'P') {
    throw unreadable(
      file,
      `a device record must start with a "P: /devices/..." line, got '${preview(lines[0].text)}'`,
      start,
    );
  }
  const devpath = first[2];
  if (!isSafeDevpath(devpath)) throw unreadable(file, `invalid device path '${preview(devpath)}'`, start);
  return devpath;
}
