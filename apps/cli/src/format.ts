import { type Attachment, type DeviceInfo, describeDevice, portLabel } from '@devgate/core';

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

/** Qubes 4.3's USED BY cell: `vm (attached)` or `vm (attached: k=v, k=v)`. */
export function formatUsedBy(attachment: Attachment | undefined): string {
  if (!attachment) return '';
  const options = Object.entries(attachment.options).map(([k, v]) => `${k}=${v}`);
  return `${attachment.frontend} (attached${options.length ? ': ' + options.join(', ') : ''})`;
}

/** Python sorts rows as tuples of str: by code point, column by column. */
export function compareRows(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  }
  return a.length - b.length;
}

/** Qubes 4.3's `qvm-device CLASS list`. */
export function formatQubesTable(devices: readonly DeviceInfo[], withHeader: boolean): string {
  const rows = devices.map((d) => [portLabel(d.port), describeDevice(d), formatUsedBy(d.attachment)]).sort(compareRows);
  return formatColumns(withHeader ? [['BACKEND:DEVID', 'DESCRIPTION', 'USED BY'], ...rows] : rows);
}

/**
 * The seed's `qvm-block -l` line: `dom0:sdb1     Cruzer () 4 GiB`, and once attached
 * `sys-usb:sda DataTraveler_2.0 () 246 MiB (attached to 'testvm' as 'xvdi')`.
 */
export function formatLegacyBlockList(devices: readonly DeviceInfo[]): string {
  const rows = devices
    .map((d) => {
      const size = typeof d.data.size === 'number' ? ` ${formatSize(d.data.size)}` : '';
      const attached = d.attachment
        ? ` (attached to '${d.attachment.frontend}'` +
          (d.attachment.options['frontend-dev'] ? ` as '${d.attachment.options['frontend-dev']}')` : ')')
        : '';
      return [portLabel(d.port), `${d.legacyDescription ?? describeDevice(d)}${size}${attached}`];
    })
    .sort(compareRows);
  return formatColumns(rows);
}

/** The old one-line form of other classes: `sys-usb:2-5     058f:3822 058f_USB_2.0_Camera`. */
export function formatLegacyList(devices: readonly DeviceInfo[]): string {
  const rows = devices
    .map((d) => {
      const attached = d.attachment ? ` (attached to ${d.attachment.frontend})` : '';
      return [portLabel(d.port), `${d.legacyDescription ?? describeDevice(d)}${attached}`];
    })
    .sort(compareRows);
  return formatColumns(rows);
}

/** `devgate list`: every class, with why hidden devices are hidden when asked. */
export function formatDevgateTable(devices: readonly DeviceInfo[], showHidden: boolean): string {
  const header = ['BACKEND:DEVID', 'CLASS', 'DESCRIPTION', 'USED BY', ...(showHidden ? ['HIDDEN'] : [])];
  const rows = devices
    .map((d) => [
      portLabel(d.port),
      d.port.devclass,
      describeDevice(d),
      formatUsedBy(d.attachment) || '-',
      ...(showHidden ? [d.hiddenReason ?? '-'] : []),
    ])
    .sort(compareRows);
  return formatColumns([header, ...rows]);
}

/** The stable JSON shape of `devgate list --json`. */
export function deviceToJson(d: DeviceInfo): Record<string, unknown> {
  return {
    port: portLabel(d.port),
    class: d.port.devclass,
    backend: d.port.backend,
    portId: d.port.portId,
    deviceId: d.deviceId,
    description: describeDevice(d),
    vendor: d.vendor ?? null,
    product: d.product ?? null,
    manufacturer: d.manufacturer ?? null,
    name: d.name ?? null,
    serial: d.serial ?? null,
    interfaces: d.interfaces,
    parent: d.parent ? portLabel(d.parent) : null,
    attachment: d.attachment ?? null,
    hidden: d.hiddenReason ?? null,
    data: d.data,
  };
}
