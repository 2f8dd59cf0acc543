import { type DeviceInfo, describeDevice, portLabel } from './device-model.js';

/** The stable JSON shape of a device, shared by `devgate list --json` and devgated's API. */
export interface DeviceJson {
  readonly port: string;
  readonly class: string;
  readonly backend: string;
  readonly portId: string;
  readonly deviceId: string;
  readonly description: string;
  readonly vendor: string | null;
  readonly product: string | null;
  readonly manufacturer: string | null;
  readonly name: string | null;
  readonly serial: string | null;
  readonly interfaces: readonly string[];
  readonly parent: string | null;
  readonly attachment: { readonly frontend: string; readonly options: Readonly<Record<string, string>> } | null;
  readonly hidden: string | null;
  readonly legacyDescription: string | null;
  readonly data: Readonly<Record<string, string | number | boolean>>;
}

export function deviceToJson(d: DeviceInfo): DeviceJson {
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
    legacyDescription: d.legacyDescription ?? null,
    data: d.data,
  };
}

/**
 * A device's JSON (`deviceToJson`, serialized) as UTF-8, made once per device object. Device
 * objects are never changed: a device that changes is a new object (drivers hand back the same
 * object while a device stays the same), so this cache is invalidated exactly when the device
 * changes, and goes with the object. devgated's list answers and events are assembled from it: a
 * burst of new partitions, or a list after one changed device, serializes those devices only.
 */
const serialized = new WeakMap<DeviceInfo, Buffer>();

/** `json`: the device's deviceToJson, when the caller made it already. */
export function deviceJsonBytes(d: DeviceInfo, json?: DeviceJson): Buffer {
  let bytes = serialized.get(d);
  if (bytes === undefined) {
    bytes = Buffer.from(JSON.stringify(json ?? deviceToJson(d)));
    serialized.set(d, bytes);
  }
  return bytes;
}

/**
 * Keeps `bytes` (the same JSON, e.g. a view into a list answer that holds it) as the device's
 * serialized JSON, in place of what it had: one copy of each device's JSON, not two.
 */
export function keepDeviceJson(d: DeviceInfo, bytes: Buffer): void {
  serialized.set(d, bytes);
}

const LIST_OPEN = Buffer.from('{"devices":[');
const LIST_SEPARATOR = Buffer.from(',');
const LIST_CLOSE = Buffer.from(']}');

/**
 * `{"devices":[...]}` for these devices, byte for byte what `JSON.stringify({ devices:
 * devices.map(deviceToJson) })` writes. `cached: false` serializes every device again (what the
 * answer costs with no cache at all, for benchmarks).
 */
export function deviceListBytes(devices: readonly DeviceInfo[], { cached = true } = {}): Buffer {
  if (!cached) return Buffer.from(JSON.stringify({ devices: devices.map(deviceToJson) }));
  const parts: Buffer[] = [LIST_OPEN];
  for (let i = 0; i < devices.length; i++) {
    if (i > 0) parts.push(LIST_SEPARATOR);
    parts.push(deviceJsonBytes(devices[i]));
  }
  parts.push(LIST_CLOSE);
  return Buffer.concat(parts);
}
