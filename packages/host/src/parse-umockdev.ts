/**
 * umockdev record files (`umockdev-record` output, libfprint's `device` files): one device per
 * paragraph, child first, each paragraph starting with `P: /devices/...`.
 *
 *   P: devpath      N: node[=HEX]     S: devlink       E: KEY=VALUE (udev property)
 *   A: name=value   (text attribute, GLib g_strescape'd)
 *   H: name=HEX     (binary attribute)
 *   L: name=target  (symlink in the device directory, raw readlink() target)
 *
 * As umockdev itself does, this parser rejects what it does not understand (with the line number),
 * except that `#` comment lines and whitespace-only lines are allowed.
 *
 * Attribute values: `A:` values are unescaped like g_strcompress and decoded as UTF-8; then one
 * trailing newline is dropped, so `A: busnum=1\n` and `A: busnum=1` both give `1`, the same as the
 * sysfs reader returns for the file. `H:` attributes are not text: `attribute()` gives undefined
 * for them and their bytes are in `RecordedDevice.binaryAttributes`.
 */
import {
  RecordedDevice,
  StringPool,
  isSafeRelativePath,
  isSafeSubsystem,
  type NumberedLine,
  paragraphs,
  preview,
  readRecordingFile,
  recordingLines,
  unreadable,
  openingDevpath,
} from './recorded-device.js';

const PATH_LINE = /^([PS]): (.*)$/;
const KEY_VALUE_LINE = /^([EAHL]): ([^=]+)=(.*)$/;
const NODE_LINE = /^N: ([^=]+)(?:=([0-9A-Fa-f]*))?$/;

export function loadUmockdev(file: string): RecordedDevice[] {
  return parseUmockdev(readRecordingFile(file).toString('utf8'), file);
}

export function parseUmockdev(text: string, file = '<umockdev>'): RecordedDevice[] {
  const isComment = (line: string) => line.startsWith('#');
  const pool = new StringPool();
  return paragraphs(recordingLines(text, file), file, isComment).map((record) => parseRecord(record, file, pool));
}

function parseRecord(lines: readonly NumberedLine[], file: string, pool: StringPool): RecordedDevice {
  const start = lines[0].no;
  const devpath = openingDevpath(lines, file, PATH_LINE);

  const properties = new Map<string, string>();
  const attributes = new Map<string, string>();
  const binaryAttributes = new Map<string, Uint8Array>();
  const links = new Map<string, string>();
  const devlinks: string[] = [];
  let devnode: string | undefined;
  let devnodeContents: Uint8Array | undefined;
  let subsystem: string | undefined;

  for (const { no, text: line } of lines.slice(1)) {
    const fail = (reason: string) => unreadable(file, `${reason} (device ${devpath})`, no);
    let m: RegExpExecArray | null;
    if ((m = PATH_LINE.exec(line))) {
      if (m[1] === 'P') throw fail('second P: line in one device record');
      if (!isSafeRelativePath(m[2])) throw fail(`invalid devlink '${preview(m[2])}'`);
      devlinks.push(m[2]);
    } else if ((m = KEY_VALUE_LINE.exec(line))) {
      const [, type, key, value] = m;
      if (type === 'E') {
        if (key === 'SUBSYSTEM') {
          if (subsystem !== undefined) throw fail('duplicate SUBSYSTEM property');
          if (!isSafeSubsystem(value)) throw fail(`invalid SUBSYSTEM '${preview(value)}'`);
          subsystem = value;
        }
        properties.set(key, value);
        continue;
      }
      if (!isSafeRelativePath(key) || key === 'uevent' || key === 'subsystem') {
        throw fail(`invalid attribute name '${preview(key)}'`);
      }
      if (type === 'A') attributes.set(key, unescapeAttribute(value).replace(/\n$/, ''));
      else if (type === 'H') binaryAttributes.set(key, decodeHex(value, fail));
      else links.set(key, value);
    } else if ((m = NODE_LINE.exec(line))) {
      if (!isSafeRelativePath(m[1])) throw fail(`invalid device node name '${preview(m[1])}'`);
      devnode = m[1];
      devnodeContents = m[2] === undefined ? undefined : decodeHex(m[2], fail);
    } else {
      throw fail(`malformed line '${preview(line)}'`);
    }
  }
  if (subsystem === undefined) throw unreadable(file, `device ${devpath} has no SUBSYSTEM property`, start);
  if (devnode !== undefined && !properties.has('DEVNAME')) properties.set('DEVNAME', `/dev/${devnode}`);
  return new RecordedDevice(
    {
      devpath,
      subsystem,
      properties: Object.fromEntries(properties),
      attributes,
      binaryAttributes,
      links,
      devlinks,
      devnode,
      devnodeContents,
    },
    pool,
  );
}

/**
 * GLib's g_strcompress: `\n`, `\t`, `\\`, `\"`, ... and octal `\NNN` bytes; any other escaped
 * character stands for itself and a lone trailing backslash is dropped. The bytes are then read as
 * UTF-8 (umockdev-record writes non-UTF-8 content as `H:`, so invalid sequences are rare; they
 * become U+FFFD).
 */
export function unescapeAttribute(value: string): string {
  if (!value.includes('\\')) return value;
  const chunks: Buffer[] = [];
  let i = 0;
  while (i < value.length) {
    const backslash = value.indexOf('\\', i);
    if (backslash < 0) {
      chunks.push(Buffer.from(value.slice(i), 'utf8'));
      break;
    }
    chunks.push(Buffer.from(value.slice(i, backslash), 'utf8'));
    i = backslash + 1;
    if (i >= value.length) break;
    const octal = /^[0-7]{1,3}/.exec(value.slice(i, i + 3));
    if (octal) {
      chunks.push(Buffer.of(parseInt(octal[0], 8) & 0xff));
      i += octal[0].length;
    } else {
      const escaped = String.fromCodePoint(value.codePointAt(i)!);
      chunks.push(NAMED_ESCAPES[escaped] ?? Buffer.from(escaped, 'utf8'));
      i += escaped.length;
    }
  }
  return Buffer.concat(chunks).toString('utf8');
}

const NAMED_ESCAPES: Record<string, Buffer> = {
  b: Buffer.of(8),
  f: Buffer.of(12),
  n: Buffer.of(10),
  r: Buffer.of(13),
  t: Buffer.of(9),
  v: Buffer.of(11),
};

function decodeHex(hex: string, fail: (reason: string) => Error): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9A-Fa-f]*$/.test(hex)) throw fail('malformed hexadecimal value');
  return new Uint8Array(Buffer.from(hex, 'hex'));
}
