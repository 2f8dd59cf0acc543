/**
 * USB devices of one backend, from its host tree: the USB class's parser boundary, where the strings a
 * device chose (descriptor strings, udev's copies of them, database names) are sanitized.
 *
 * What is offered is what Qubes' USB proxy exports: whole devices (never single interfaces), by
 * busid, minus hubs and root hubs. USB devices are top-level in Qubes, so `parent` stays unset; the
 * hub chain and the host controller are recorded in `data` instead, and the block, input and hidraw
 * devices under a USB device are listed in `data.children` so other classes' ports can be linked to it.
 */
import {
  type DataValue,
  type DeviceInfo,
  type InterfaceCode,
  type RawDeviceRecord,
  type SafeText,
  HostTree,
  decodeUdevEscapes,
  isKernelName,
  isUsbDevice,
  isUsbInterface,
  recordOf,
  sanitizeText,
  sysname,
  trusted,
  usbDeviceAbove,
  usbDeviceId,
  usbIds,
  usbInterfaces,
  compareNatural,
} from '@devgate/core';
import { type UsbNames } from './usb-ids.js';

/** A whole device's busid: `2-5`, `1-1.5.4.2` (Qubes' port rule, with dots). Interfaces (`1-1:1.0`)
 *  and root hubs (`usb1`) do not match. */
const BUSID = /^(\d{1,3})-\d{1,3}(\.\d{1,3}){0,6}$/;
const PCI_ADDRESS = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;
const CHILD_SUBSYSTEMS = ['block', 'input', 'hidraw'];
const HUB_CLASS = 9;

export function parseUsbDevices(tree: HostTree, backend: string, names?: UsbNames): DeviceInfo[] {
  const { tree: full, inferred } = withInferredDevices(tree);
  const result: DeviceInfo[] = [];
  for (const device of full.devices('usb')) {
    if (!isUsbDevice(device)) continue;
    const busid = sysname(device.devpath);
    // Root hubs are `usbN`, which the busid rule excludes. Vendor 1d6b alone is not a test: Linux USB
    // gadgets (a phone or a Raspberry Pi in gadget mode) use it for real devices too.
    if (!BUSID.test(busid)) continue;
    const interfaces = sharedList(usbInterfaces(full, device));
    if (isHub(device, interfaces)) continue;
    result.push(toDeviceInfo(full, backend, device, busid, interfaces, names, inferred.has(device)));
  }
  return result.sort((a, b) => compareNatural(a.port.portId, b.port.portId));
}

function toDeviceInfo(
  tree: HostTree,
  backend: string,
  device: RawDeviceRecord,
  busid: string,
  interfaces: InterfaceCode[],
  names: UsbNames | undefined,
  inferred: boolean,
): DeviceInfo {
  const props = device.properties;
  const ids = usbIds(device);
  const vendorId = shared(ids.vendorId);
  const productId = shared(ids.productId);
  const manufacturer = shared(descriptorString(device, 'manufacturer', 'ID_VENDOR_ENC', vendorId));
  const productString = shared(descriptorString(device, 'product', 'ID_MODEL_ENC', productId));
  const serial = sanitizeText(props.ID_SERIAL_SHORT ?? device.attribute('serial'));
  // The device's own strings first; the ID database (ours, then the backend's udev hwdb) names
  // devices that have none, such as the Kinesis keyboard with no string descriptors at all.
  const vendor =
    manufacturer ?? shared(sanitizeText(names?.vendor(vendorId)) ?? sanitizeText(props.ID_VENDOR_FROM_DATABASE));
  const product =
    productString ??
    shared(sanitizeText(names?.product(vendorId, productId)) ?? sanitizeText(props.ID_MODEL_FROM_DATABASE));

  const controller = shared(controllerOf(device.devpath, busid));
  const data: Record<string, DataValue> = {
    'vendor-id': vendorId,
    'product-id': productId,
    busnum: number(device.attribute('busnum') ?? props.BUSNUM) ?? Number(BUSID.exec(busid)![1]),
  };
  const devnum = number(device.attribute('devnum') ?? props.DEVNUM);
  if (devnum !== undefined) data.devnum = devnum;
  if (controller) data.controller = controller;
  const hubs = hubChain(busid);
  if (hubs.length > 0) data['hub-chain'] = hubs.join(',');
  const speed = speedOf(device.attribute('speed'));
  if (speed !== undefined) data.speed = speed;
  const authorized = device.attribute('authorized');
  if (authorized !== undefined) data.authorized = authorized.trim() === '1';
  const children = childNames(tree, device);
  if (children.length > 0) data.children = children.join(',');
  if (inferred) data['inferred-from-interfaces'] = true;
  const warning = badUsbWarning(interfaces);
  if (warning) data.warning = warning;

  return {
    port: { devclass: 'usb', backend, portId: busid },
    deviceId: usbDeviceId(tree, device),
    vendor,
    product,
    manufacturer,
    name: productString,
    serial,
    interfaces,
    legacyDescription: legacyDescription(device, vendorId, productId, manufacturer, productString, serial),
    // A device on the USB/IP client controller was imported from elsewhere: offering it again
    // would pass a passed-through device on (Qubes' backend skips these too).
    hiddenReason: controller?.startsWith('vhci_hcd') ? 'imported over USB/IP' : undefined,
    data,
  };
}

/**
 * What many devices have in common (ids, names, the controller, interface lists) kept once: 10,000
 * keyboards of one model hold one "Primax", not 10,000 (ADR 0015). A bounded table, emptied when
 * full, so devices that come and go never make it grow.
 */
const SHARED_MAX = 4096;
const sharedStrings = new Map<string, string>();
const sharedLists = new Map<string, readonly InterfaceCode[]>();

function shared<T extends string | undefined>(value: T): T {
  if (value === undefined) return value;
  const known = sharedStrings.get(value);
  if (known !== undefined) return known as T;
  if (sharedStrings.size >= SHARED_MAX) sharedStrings.clear();
  sharedStrings.set(value, value);
  return value;
}

function sharedList(codes: InterfaceCode[]): InterfaceCode[] {
  const key = codes.join(',');
  const known = sharedLists.get(key);
  if (known !== undefined) return known as InterfaceCode[];
  if (sharedLists.size >= SHARED_MAX) sharedLists.clear();
  const kept = codes.map(shared);
  sharedLists.set(key, kept);
  return kept;
}

/**
 * A descriptor string from sysfs, else udev's `*_ENC` copy. With no string descriptor, udev puts the
 * hex id in its place (`ID_VENDOR_ENC=05f3`): that is not a name, so it counts as absent.
 */
function descriptorString(
  device: RawDeviceRecord,
  attribute: 'manufacturer' | 'product',
  encProperty: 'ID_VENDOR_ENC' | 'ID_MODEL_ENC',
  id: string,
): SafeText | undefined {
  const fromSysfs = sanitizeText(device.attribute(attribute));
  if (fromSysfs) return fromSysfs;
  const enc = device.properties[encProperty];
  if (enc === undefined) return undefined;
  const decoded = decodeUdevEscapes(enc);
  return decoded.trim().toLowerCase() === id ? undefined : sanitizeText(decoded);
}

/**
 * Qubes' pre-4.3 one-line description, `vvvv:pppp <ID_SERIAL>` (`058f:3822 058f_USB_2.0_Camera`).
 * Without udev, ID_SERIAL is rebuilt the way udev builds it: vendor, model and serial joined by `_`,
 * the hex ids standing in for missing strings.
 */
function legacyDescription(
  device: RawDeviceRecord,
  vendorId: string,
  productId: string,
  manufacturer: SafeText | undefined,
  product: SafeText | undefined,
  serial: SafeText | undefined,
): SafeText {
  const underscored = (text: string) => text.replace(/\s+/g, '_');
  const fromUdev = sanitizeText(device.properties.ID_SERIAL);
  const desc = fromUdev
    ? underscored(fromUdev)
    : [manufacturer ?? vendorId, product ?? productId, serial]
        .filter((part) => part !== undefined)
        .map(underscored)
        .join('_');
  return trusted(`${vendorId}:${productId} ${desc}`);
}

/**
 * A device that can type and is also storage or a network adapter (ADR 0009's BadUSB case): listed
 * by its first category ("USB_Storage"), it would give whoever gets it a keyboard unannounced.
 * core's describeDevice shows the warning in lists, asks and notifications.
 */
function badUsbWarning(interfaces: readonly InterfaceCode[]): string | undefined {
  if (!interfaces.some((code) => code.startsWith('u03'))) return undefined;
  const also = [
    interfaces.some((code) => code.startsWith('u08')) ? 'USB storage' : undefined,
    interfaces.some((code) => /^u(02|0a|e0)/.test(code)) ? 'a network adapter' : undefined,
  ].filter((what) => what !== undefined);
  return also.length > 0 ? `BadUSB? an input device and ${also.join(' and ')} in one USB device` : undefined;
}

/** bDeviceClass 09 (sysfs, hex) or TYPE=9/... (uevent, decimal), or only hub interfaces. */
function isHub(device: RawDeviceRecord, interfaces: readonly InterfaceCode[]): boolean {
  const fromSysfs = device.attribute('bDeviceClass');
  const deviceClass =
    fromSysfs !== undefined ? parseInt(fromSysfs, 16) : parseInt(device.properties.TYPE?.split('/')[0] ?? '', 10);
  if (deviceClass === HUB_CLASS) return true;
  return interfaces.length > 0 && interfaces.every((code) => code.startsWith('u09'));
}

/**
 * The host controller: the PCI function above the root hub (`0000:00:14.0`), or, with no PCI device
 * on the path (a Raspberry Pi's `3f980000.usb`, `vhci_hcd.0`), the device the root hub sits on. The
 * nearest PCI function wins over platform glue devices between it and the root hub (dwc3's
 * `xhci-hcd.0.auto`), since that is what can be handed to a VM. Read from the path, as a udev dump
 * often lacks the controller's own record.
 */
function controllerOf(devpath: string, busid: string): string | undefined {
  const parts = devpath.split('/');
  const rootHub = parts.lastIndexOf(`usb${BUSID.exec(busid)![1]}`);
  if (rootHub <= 1) return undefined;
  for (let i = rootHub - 1; i > 1; i--) if (PCI_ADDRESS.test(parts[i])) return parts[i];
  return sanitizeText(parts[rootHub - 1]);
}

/** The hubs between the root hub and the device are the busid's prefixes: `1-1.5.4.2` -> 1-1, 1-1.5, 1-1.5.4. */
function hubChain(busid: string): string[] {
  const [bus, path] = busid.split('-');
  const ports = path.split('.');
  return ports.slice(0, -1).map((_, i) => `${bus}-${ports.slice(0, i + 1).join('.')}`);
}

/** Kernel names of the block, input and hidraw devices that belong to this USB device, parents first. */
function childNames(tree: HostTree, device: RawDeviceRecord): string[] {
  return CHILD_SUBSYSTEMS.flatMap((subsystem) => tree.descendants(device, subsystem))
    .filter((child) => usbDeviceAbove(tree, child) === device)
    .map((child) => child.devpath)
    .sort()
    .map(sysname)
    .filter(isKernelName); // child names worth linking; anything else is dropped
}

/** Mbit/s as the kernel writes it: `1.5`, `12`, `480`, `5000`, `10000`, `20000`. Anything else is dropped. */
function speedOf(raw: string | undefined): number | undefined {
  const text = raw?.trim();
  return text !== undefined && /^\d{1,6}(\.\d{1,3})?$/.test(text) ? Number(text) : undefined;
}

function number(raw: string | undefined): number | undefined {
  const text = raw?.trim();
  return text !== undefined && /^\d{1,5}$/.test(text) ? Number(text) : undefined;
}

/**
 * A udev database dump can lack a device's own entry while its interfaces are there (the HP
 * EliteBook dump has `1-2:1.0` and `1-2:1.1`, a keyboard and a mouse, but no `1-2`). Such a device
 * is real and plugged in, so it is rebuilt from its interfaces: the kernel puts the device's
 * `PRODUCT` (vendor/product/bcdDevice) and `TYPE` (device class) on every interface's uevent.
 */
function withInferredDevices(tree: HostTree): { tree: HostTree; inferred: Set<RawDeviceRecord> } {
  const missing = new Map<string, RawDeviceRecord>();
  for (const usbInterface of tree.devices('usb')) {
    if (!isUsbInterface(usbInterface)) continue;
    const devpath = usbInterface.devpath.slice(0, usbInterface.devpath.lastIndexOf('/'));
    if (missing.has(devpath) || tree.device(devpath) || !BUSID.test(sysname(devpath))) continue;
    const { PRODUCT, TYPE } = usbInterface.properties;
    const properties: Record<string, string> = { SUBSYSTEM: 'usb', DEVTYPE: 'usb_device' };
    if (PRODUCT !== undefined) properties.PRODUCT = PRODUCT;
    if (TYPE !== undefined) properties.TYPE = TYPE;
    missing.set(devpath, recordOf(devpath, 'usb', properties));
  }
  if (missing.size === 0) return { tree, inferred: new Set() };
  return {
    tree: new HostTree([...tree.devices(), ...missing.values()], tree.usage),
    inferred: new Set(missing.values()),
  };
}
