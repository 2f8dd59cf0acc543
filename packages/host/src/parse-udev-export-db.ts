/**
 * `udevadm info --export-db` dumps: every device udev knows, one paragraph each, in database order
 * (children may come before parents, and many ancestors are missing, which HostTree allows).
 *
 *   P: devpath   N: node   S: devlink   E: KEY=VALUE   L: <devlink priority, ignored>
 *
 * There are no sysfs attributes in this format, so `attribute()` is always undefined. Property
 * values are kept raw: `\x20` escapes in `*_ENC` values are for the drivers to decode.
 *
 * Real dumps are messy, so this parser is lenient where it can be without guessing: line types it
 * does not know (newer systemd prints M:, R:, U:, T:, D:, I:, Q:, V:, J:, W:) are skipped, and a
 * bare `KEY=VALUE` line with no `E: ` prefix (seen after an empty `E: HID_UNIQ=` in real dumps) is
 * taken as a property unless an `E:` line sets the same key. It still rejects, with the line
 * number, a paragraph that does not start with `P:`, a second `P:`, unsafe paths and `E:` lines
 * with no `=`. A device listed twice is returned twice; HostTree keeps the first.
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

const TYPED_LINE = /^([A-Za-z]):[ ]?(.*)$/;
const BARE_PROPERTY = /^([A-Za-z_][A-Za-z0-9_.]*)=(.*)$/;

export function loadUdevExportDb(file: string): RecordedDevice[] {
  return parseUdevExportDb(readRecordingFile(file).toString('utf8'), file);
}

export function parseUdevExportDb(text: string, file = '<export-db>'): RecordedDevice[] {
  const pool = new StringPool();
  return paragraphs(recordingLines(text, file), file).map((record) => parseRecord(record, file, pool));
}

function parseRecord(lines: readonly NumberedLine[], file: string, pool: StringPool): RecordedDevice {
  const start = lines[0].no;
  const devpath = openingDevpath(lines, file, TYPED_LINE);

  const properties = new Map<string, string>();
  const bare = new Map<string, string>();
  const devlinks: string[] = [];
  let devnode: string | undefined;

  for (const { no, text: line } of lines.slice(1)) {
    const fail = (reason: string) => unreadable(file, `${reason} (device ${devpath})`, no);
    const typed = TYPED_LINE.exec(line);
    if (!typed) {
      const quirk = BARE_PROPERTY.exec(line);
      if (quirk) bare.set(quirk[1], quirk[2]);
      continue; // anything else is noise between known lines
    }
    const [, type, value] = typed;
    switch (type) {
      case 'P':
        throw fail('second P: line in one device record');
      case 'N':
        if (!isSafeRelativePath(value)) throw fail(`invalid device node name '${preview(value)}'`);
        devnode = value;
        break;
      case 'S':
        if (!isSafeRelativePath(value)) throw fail(`invalid devlink '${preview(value)}'`);
        devlinks.push(value);
        break;
      case 'E': {
        const eq = value.indexOf('=');
        if (eq <= 0) throw fail(`malformed property line '${preview(line)}'`);
        properties.set(value.slice(0, eq), value.slice(eq + 1));
        break;
      }
      default:
        // L: (devlink priority) and the newer systemd line types carry nothing drivers use.
        break;
    }
  }
  for (const [key, value] of bare) if (!properties.has(key)) properties.set(key, value);
  const subsystem = properties.get('SUBSYSTEM') ?? '';
  if (subsystem !== '' && !isSafeSubsystem(subsystem)) {
    throw unreadable(file, `invalid SUBSYSTEM '${preview(subsystem)}' (device ${devpath})`, start);
  }
  if (devnode !== undefined && !properties.has('DEVNAME')) properties.set('DEVNAME', `/dev/${devnode}`);
  return new RecordedDevice(
    { devpath, subsystem, properties: Object.fromEntries(properties), devlinks, devnode },
    pool,
  );
}
