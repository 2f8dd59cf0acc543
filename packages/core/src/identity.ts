/**
 * Identities shared by several drivers: a USB disk's device id is built from its USB parent's, so
 * the USB identity lives here rather than in either driver.
 */
import { type HostTree, type RawDeviceRecord } from './host-tree.js';
import { type InterfaceCode, interfaceCode } from './interfaces.js';
import { sanitizeText } from './sanitize.js';

export function isUsbDevice(record: RawDeviceRecord): boolean {
  return record.subsystem === 'usb' && record.properties.DEVTYPE === 'usb_device';
}

export function isUsbInterface(record: RawDeviceRecord): boolean {
  return record.subsystem === 'usb' && record.properties.DEVTYPE === 'usb_interface';
}

/** The USB device a record sits under (itself excluded), nearest first. */
export function usbDeviceAbove(tree: HostTree, record: RawDeviceRecord): RawDeviceRecord | undefined {
  for (const ancestor of tree.ancestors(record)) if (isUsbDevice(ancestor)) return ancestor;
  return undefined;
}

function hex4(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const clean = value.trim().toLowerCase().replace(/^0x/, '');
  return /^[0-9a-f]{1,4}$/.test(clean) ? clean.padStart(4, '0') : undefined;
}

/** Vendor and product ids: udev's ID_*_ID, the sysfs attributes, or the kernel's PRODUCT=v/p/rev. */
export function usbIds(record: RawDeviceRecord): { vendorId: string; productId: string } {
  const product = record.properties.PRODUCT?.split('/');
  return {
    vendorId:
      hex4(record.properties.ID_VENDOR_ID) ?? hex4(record.attribute('idVendor')) ?? hex4(product?.[0]) ?? '0000',
    productId:
      hex4(record.properties.ID_MODEL_ID) ?? hex4(record.attribute('idProduct')) ?? hex4(product?.[1]) ?? '0000',
  };
}

/** Interface codes of a USB device, from udev's ID_USB_INTERFACES or from its interface records. */
export function usbInterfaces(tree: HostTree, device: RawDeviceRecord): InterfaceCode[] {
  const fromUdev = device.properties.ID_USB_INTERFACES;
  if (fromUdev) {
    const codes = fromUdev
      .split(':')
      .filter((c) => /^[0-9a-fA-F*]{6}$/.test(c))
      .map((c) => `u${c.toLowerCase()}`);
    if (codes.length > 0) return codes;
  }
  const codes: InterfaceCode[] = [];
  for (const child of tree.descendants(device, 'usb')) {
    if (!isUsbInterface(child) || usbDeviceAbove(tree, child) !== device) continue;
    const fromAttributes = ['bInterfaceClass', 'bInterfaceSubClass', 'bInterfaceProtocol'].map((a) =>
      parseInt(child.attribute(a) ?? '', 16),
    );
    const fromUevent = (child.properties.INTERFACE ?? '').split('/').map((n) => parseInt(n, 10));
    const triple = fromAttributes.every(Number.isFinite) ? fromAttributes : fromUevent;
    if (triple.length === 3 && triple.every(Number.isFinite)) {
      const code = interfaceCode('u', triple[0], triple[1], triple[2]);
      if (!codes.includes(code)) codes.push(code);
    }
  }
  return codes;
}

/** The serial as it may appear inside a device id: sanitized, and without the id's separator. */
export function usbSerial(record: RawDeviceRecord): string | undefined {
  const raw = record.properties.ID_SERIAL_SHORT ?? record.attribute('serial');
  return sanitizeText(raw)?.replace(/[^A-Za-z0-9_.+-]/g, '_');
}

/** Qubes' USB device id: `vvvv:pppp:serial:interfaces`. */
export function usbDeviceId(tree: HostTree, device: RawDeviceRecord): string {
  const { vendorId, productId } = usbIds(device);
  return `${vendorId}:${productId}:${usbSerial(device) ?? ''}:${usbInterfaces(tree, device).join('')}`;
}

/** Where a device sits under USB: the USB device's port and record, and the interface it hangs off. */
export interface UsbPlacement {
  readonly portId: string;
  readonly interfaceNumber: string;
  /** Absent when the recording holds no record for the USB device itself. */
  readonly device?: RawDeviceRecord;
}

const INTERFACE_SEGMENT = /^(\d+-\d+(?:\.\d+)*):(\d+\.\d+)$/;

/**
 * The USB interface a device (a SCSI disk, an input device) sits under. Read from the sysfs path,
 * so it works when a recording left the interface record out (udevadm dumps often do).
 */
export function usbPlacement(tree: HostTree, record: RawDeviceRecord): UsbPlacement | undefined {
  const segments = record.devpath.split('/');
  for (let i = segments.length - 1; i >= 0; i--) {
    const match = INTERFACE_SEGMENT.exec(segments[i]);
    if (!match) continue;
    const devicePath = segments.slice(0, i).join('/');
    return { portId: match[1], interfaceNumber: match[2], device: tree.device(devicePath) };
  }
  return undefined;
}
