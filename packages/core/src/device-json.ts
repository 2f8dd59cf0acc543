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
