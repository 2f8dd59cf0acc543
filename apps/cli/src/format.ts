// Output formats. They work on the JSON shape of devices (what devgated sends and `deviceToJson`
// makes in-process), and import nothing at run time, so the quick client stays quick.
import { type DeviceJson } from '@devgate/core';
import { type AssignmentJson } from '@devgate/client';

/** `column -t`: every column but the last padded to its widest cell, two spaces apart. */
export function formatColumns(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows
    .map((row) =>
      row
        .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i])))
        .join('  ')
        .trimEnd(),
    )
    .map((line) => line + '\n')
    .join('');
}

/** Sizes as the seed shows them: `4 GiB`, `246 MiB`, one decimal when it is not whole. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const rounded = Math.round(value * 10) / 10;
  return `${Number.isInteger(rounded) ? rounded.toFixed(0) : rounded.toFixed(1)} ${units[unit]}`;
}

function withOptions(label: string, options: Readonly<Record<string, string>>): string {
  const pairs = Object.entries(options).map(([k, v]) => `${k}=${v}`);
  return pairs.length ? `${label}: ${pairs.join(', ')}` : label;
}

/** Qubes 4.3's USED BY cell: `vm (attached)` or `vm (attached: k=v, k=v)`. */
export function formatUsedBy(attachment: DeviceJson['attachment']): string {
  return attachment ? `${attachment.frontend} (${withOptions('attached', attachment.options)})` : '';
}

/** Python sorts rows as tuples of str: by code point, column by column. */
export function compareRows(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  }
  return a.length - b.length;
}

/**
 * Qubes 4.3's `qvm-device CLASS list`. With assignments (`-s`), assigned frontends are added as
 * `*vm (mode: k=v)`, and an assignment whose device is absent gets a row of its own, described by
 * its device id. With `sbdf` (`qvm-pci list --with-sbdf`), an SBDF column follows the port.
 */
export function formatQubesTable(
  devices: readonly DeviceJson[],
  withHeader: boolean,
  assignments: readonly AssignmentJson[] = [],
  { sbdf = false }: { sbdf?: boolean } = {},
): string {
  const withSbdf = (row: string[], value: unknown) => (sbdf ? [row[0], String(value ?? ''), ...row.slice(1)] : row);
  const rows = devices.map((d) => {
    const assigned = assignments
      .filter((a) => matches(a, d))
      .map((a) => `*${a.frontend} (${withOptions(a.mode, a.options)})`);
    const row = [d.port, d.description, [formatUsedBy(d.attachment), ...assigned].filter(Boolean).join(', ')];
    return withSbdf(row, d.data.sbdf);
  });
  for (const a of assignments) {
    if (devices.some((d) => matches(a, d))) continue;
    const description = a.deviceId === '*' ? 'any device' : a.deviceId;
    rows.push(
      withSbdf([`${a.backend}:${a.portId}`, description, `*${a.frontend} (${withOptions(a.mode, a.options)})`], ''),
    );
  }
  rows.sort(compareRows);
  const header = withSbdf(['BACKEND:DEVID', 'DESCRIPTION', 'USED BY'], 'SBDF');
  return formatColumns(withHeader ? [header, ...rows] : rows);
}

function matches(a: AssignmentJson, d: DeviceJson): boolean {
  return (
    a.devclass === d.class &&
    a.backend === d.backend &&
    (a.portId === '*' || a.portId === d.portId) &&
    (a.deviceId === '*' || a.deviceId === d.deviceId)
  );
}

/**
 * The seed's `qvm-block -l` line: `dom0:sdb1     Cruzer () 4 GiB`, and once attached
 * `sys-usb:sda DataTraveler_2.0 () 246 MiB (attached to 'testvm' as 'xvdi')`.
 */
export function formatLegacyBlockList(devices: readonly DeviceJson[]): string {
  const rows = devices
    .map((d) => {
      const size = typeof d.data.size === 'number' ? ` ${formatSize(d.data.size)}` : '';
      const dev = d.attachment?.options['frontend-dev'];
      const attached = d.attachment ? ` (attached to '${d.attachment.frontend}'${dev ? ` as '${dev}'` : ''})` : '';
      return [d.port, `${d.legacyDescription ?? d.description}${size}${attached}`];
    })
    .sort(compareRows);
  return formatColumns(rows);
}

/** The old one-line form of other classes: `sys-usb:2-5     058f:3822 058f_USB_2.0_Camera`. */
export function formatLegacyList(devices: readonly DeviceJson[]): string {
  const rows = devices
    .map((d) => {
      const attached = d.attachment ? ` (attached to ${d.attachment.frontend})` : '';
      return [d.port, `${d.legacyDescription ?? d.description}${attached}`];
    })
    .sort(compareRows);
  return formatColumns(rows);
}

/** `devgate list`: every class, with why hidden devices are hidden when asked. */
export function formatDevgateTable(devices: readonly DeviceJson[], showHidden: boolean): string {
  const header = ['BACKEND:DEVID', 'CLASS', 'DESCRIPTION', 'USED BY', ...(showHidden ? ['HIDDEN'] : [])];
  const rows = devices
    .map((d) => [
      d.port,
      d.class,
      d.description,
      formatUsedBy(d.attachment) || '-',
      ...(showHidden ? [d.hidden ?? '-'] : []),
    ])
    .sort(compareRows);
  return formatColumns([header, ...rows]);
}

/** Qubes' `info`: the description (no port before it), the device id, then one `key: value` line per data item. */
export function formatInfo(device: DeviceJson): string {
  const lines = [device.description, `device ID: ${device.deviceId}`];
  for (const [key, value] of Object.entries(device.data)) lines.push(`${key.replace(/[-_]/g, ' ')}: ${value}`);
  if (device.hidden) lines.push(`hidden: ${device.hidden}`);
  return lines.join('\n') + '\n';
}
