/**
 * Parsers for the small text formats a host exposes: sysfs `uevent` files, udev database entries
 * (`/run/udev/data/*`), `/proc/self/mountinfo` and `/proc/swaps`. All input is untrusted; these
 * functions only split it, they never interpret device strings.
 */

/** `KEY=VALUE` lines (a sysfs uevent file, or `udevadm monitor --property` output). */
export function parseKeyValueLines(text: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq).trim();
    if (/^[A-Za-z0-9_.]+$/.test(key)) result[key] = line.slice(eq + 1);
  }
  return result;
}

/** A udev database entry: `E:KEY=VALUE` properties (other line types are ignored). */
export function parseUdevDataFile(text: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const line of text.split('\n')) {
    if (!line.startsWith('E:')) continue;
    const eq = line.indexOf('=');
    if (eq > 2) result[line.slice(2, eq)] = line.slice(eq + 1);
  }
  return result;
}

/**
 * `major:minor` of every mounted device, from mountinfo's third field. A filesystem that reports an
 * anonymous device there (btrfs: `0:NN`) is on its mount source: `deviceOf` says which device a
 * `/dev/...` source is.
 */
export function parseMountinfo(
  text: string,
  deviceOf: (source: string) => string | undefined = () => undefined,
): Set<string> {
  const mounted = new Set<string>();
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    if (fields.length < 3 || !/^\d+:\d+$/.test(fields[2])) continue;
    if (!fields[2].startsWith('0:')) {
      mounted.add(fields[2]);
      continue;
    }
    // After the optional fields: `- fstype source options`.
    const source = fields[fields.indexOf('-', 6) + 2]?.replace(/\\040/g, ' ');
    const device = source?.startsWith('/dev/') ? deviceOf(source) : undefined;
    if (device) mounted.add(device);
  }
  return mounted;
}

/** Device paths in use as swap (files are left out: they are not block devices). */
export function parseSwaps(text: string): Set<string> {
  const swaps = new Set<string>();
  for (const line of text.split('\n').slice(1)) {
    const [name, type] = line.trim().split(/\s+/);
    if (name && type === 'partition') swaps.add(name.replace(/\\040/g, ' '));
  }
  return swaps;
}
