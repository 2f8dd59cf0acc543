import { Errors } from './errors.js';
import { type InterfaceCode, UNKNOWN_INTERFACE, deviceCategory } from './interfaces.js';
import { type SafeText } from './sanitize.js';

/** Device classes are open: third-party drivers add their own ids. */
export type DeviceClassId = 'block' | 'usb' | 'input' | 'pci' | (string & {});
export type DomainName = string;

/** Qubes' rule for domain names: a letter, then letters, digits, `_`, `.` or `-`; 31 characters at most. */
const DOMAIN_NAME = /^[a-zA-Z][a-zA-Z0-9_.-]{0,30}$/;

export function isValidDomainName(name: string): boolean {
  return DOMAIN_NAME.test(name);
}

/** Where a device sits: `backend:portId` within one device class. */
export interface Port {
  readonly backend: DomainName;
  readonly portId: string;
  readonly devclass: DeviceClassId;
}

export function portKey(port: Port): string {
  return `${port.devclass}:${port.backend}:${port.portId}`;
}

export function portLabel(port: Pick<Port, 'backend' | 'portId'>): string {
  return `${port.backend}:${port.portId}`;
}

/** An attachment as the hypervisor reports it. */
export interface Attachment {
  readonly frontend: DomainName;
  readonly options: Readonly<Record<string, string>>;
}

export type DataValue = string | number | boolean;

/**
 * What a driver knows about one device. Every string taken from the device is `SafeText`: it was
 * sanitized by the driver's parser and is inert in any output.
 */
export interface DeviceInfo {
  readonly port: Port;
  /** What the device is, independent of where it is plugged (Qubes' device_id). */
  readonly deviceId: string;
  readonly vendor?: SafeText;
  readonly product?: SafeText;
  readonly manufacturer?: SafeText;
  readonly name?: SafeText;
  readonly serial?: SafeText;
  readonly interfaces: readonly InterfaceCode[];
  readonly parent?: Port;
  readonly attachment?: Attachment;
  /** Why the device is not offered for attachment (mounted, swap, ...); absent when it is. */
  readonly hiddenReason?: string;
  /**
   * Hidden because its backend uses it (mounted, swap, held by dm/LVM/RAID), as opposed to having
   * nothing to offer (an empty loop, no medium): whatever contains it cannot be handed over either.
   */
  readonly inUse?: boolean;
  /** The one-line description of Qubes' pre-4.3 tools (block: `model (label)`). */
  readonly legacyDescription?: SafeText;
  readonly data: Readonly<Record<string, DataValue>>;
}

/** Qubes' description: `<Category>: <vendor> <product>`, with its fallbacks. */
export function describeDevice(device: DeviceInfo): string {
  const interfaces = device.interfaces.length > 0 ? device.interfaces : [UNKNOWN_INTERFACE];
  const vendor = device.vendor ?? device.manufacturer ?? 'unknown vendor';
  const product =
    device.product ??
    device.name ??
    device.serial ??
    (device.parent ? `sub-device of ${portLabel(device.parent)}` : `unknown ${device.port.devclass} device`);
  // Qubes falls back to the interface itself when no category fits (hwdata names come later).
  const category = deviceCategory(interfaces);
  const description = `${category === 'Other' ? interfaces[0] : category}: ${vendor} ${product}`;
  // A driver's warning about the device itself (an input device that is also USB storage) goes
  // wherever the device is described: lists, asks, notifications.
  const warning = device.data.warning;
  return typeof warning === 'string' && warning !== '' ? `${description} [${warning}]` : description;
}

/** A `BACKEND:PORT[:DEVICE_ID]` argument as the user typed it. `*` is a wildcard. */
export interface DeviceArgument {
  readonly backend: DomainName;
  readonly portId: string;
  readonly deviceId?: string;
}

export function parseDeviceArgument(arg: string): DeviceArgument {
  const colon = arg.indexOf(':');
  if (colon <= 0 || colon === arg.length - 1) throw Errors.badDeviceArgument({ arg });
  const backend = arg.slice(0, colon);
  const rest = arg.slice(colon + 1);
  const sep = rest.indexOf(':');
  const portId = sep < 0 ? rest : rest.slice(0, sep);
  const deviceId = sep < 0 ? undefined : rest.slice(sep + 1);
  if (portId === '') throw Errors.badDeviceArgument({ arg });
  return deviceId === undefined || deviceId === '' ? { backend, portId } : { backend, portId, deviceId };
}
