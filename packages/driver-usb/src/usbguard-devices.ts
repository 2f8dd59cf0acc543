/**
 * Every USB device of a host tree as USBGuard sees it (`UsbGuardDevice`): what authorization rules
 * match and what `generate-policy` writes. Unlike the passthrough driver, this covers every
 * usb_device, hubs and root hubs (`usbN`) included, since authorization applies to all of them.
 *
 * The values follow USBGuard 1.1.2 (UEventDevice), read from sysfs attributes:
 *
 *   id                 idVendor:idProduct
 *   name, serial       `product` and `serial`, as bytes, with trailing NUL, LF, CR, TAB and BS removed
 *   via-port           the sysfs name: the busid (`1-1.4`), or `usbN` for a root hub
 *   with-interface     one cc:ss:pp per interface descriptor (alternate settings included), from
 *                      `descriptors`
 *   with-connect-type  `port/connect_type`, else empty
 *   hash               base64(SHA-256(name, vendor id, product id, serial, descriptors)): the four
 *                      strings' bytes as read (ids as 4 lowercase hex digits), then every descriptor
 *                      (a root hub's bcdDevice zeroed), with no separators; see parse-usb-descriptors.ts
 *   parent-hash        the parent device's hash; for a root hub, the hash of its parent's sysfs
 *                      path (`/devices/pci0000:00/0000:00:14.0`)
 *
 * Strings are kept byte-exact, not sanitized: a rule must match the device's real bytes. Bytes that
 * are not UTF-8 become lone surrogates (rule-strings.ts), which formatRule prints back as `\xHH`, so
 * any output built with formatRule is inert whatever the device sent.
 *
 * Recordings often lack sysfs attributes: then the udev database stands in (ID_VENDOR_ID,
 * ID_MODEL_ENC, ID_SERIAL_SHORT, ID_USB_INTERFACES, or the interfaces' own records), which is close
 * but not always byte-exact (udev rewrites some characters in ID_SERIAL_SHORT). Without
 * `descriptors` there is no hash, and rules that need one cannot be decided (usb-authorization.ts).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  type HostTree,
  type RawDeviceRecord,
  decodeUdevEscapes,
  isUsbDevice,
  isUsbInterface,
  sysname,
  usbIds,
} from '@devgate/core';
import { type UsbGuardDevice } from './usbguard/evaluate-rules.js';
import { bytesToString } from './usbguard/rule-strings.js';
import { parseUsbDescriptors } from './parse-usb-descriptors.js';

/** Raw bytes of a device's attribute (`descriptors`, `product`, `port/connect_type`), if it has it. */
export type UsbAttributeBytes = (record: RawDeviceRecord, attribute: string) => Uint8Array | undefined;

export interface UsbGuardInterfaceEntry {
  /** `1-1.4:1.0` */
  readonly name: string;
  readonly devpath: string;
  /** `cc:ss:pp` */
  readonly type: string;
}

export interface UsbGuardDeviceEntry {
  readonly devpath: string;
  /** The busid, or `usbN` for a root hub: USBGuard's via-port. */
  readonly port: string;
  readonly isRootHub: boolean;
  readonly device: UsbGuardDevice;
  /** Why `device.hash` is missing (no descriptors, or invalid ones). */
  readonly hashUnavailable?: string;
  /** Set when the descriptors are there but invalid: a device to block, not to describe. */
  readonly invalidDescriptors?: string;
  /** Why `device.parentHash` is missing. */
  readonly parentHashUnavailable?: string;
  /** The active configuration's interfaces, for per-interface authorization. */
  readonly interfaces: readonly UsbGuardInterfaceEntry[];
  /** `authorized` as sysfs has it now, when readable. */
  readonly authorized?: boolean;
  /** The kernel's device number: a device plugged again gets a new one. */
  readonly devnum?: string;
}

export interface UsbGuardDevicesOptions {
  /**
   * Where raw attribute bytes come from. Default: a recording's binary attributes (umockdev `H:`
   * lines) and otherwise the text attributes. For a live host pass `sysfsAttributeBytes(roots.sys)`:
   * the text view of a sysfs tree cannot carry binary `descriptors`.
   */
  readonly bytes?: UsbAttributeBytes;
}

const ROOT_HUB = /^usb\d{1,3}$/;
const BUSID = /^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}$/;
const TRIM_TAIL = new Set([0x00, 0x0a, 0x0d, 0x09, 0x08]);
/** An attribute larger than a sysfs page is not one; USB strings are far shorter. */
const MAX_ATTRIBUTE_BYTES = 64 * 1024;

/** USBGuard's devices of a tree, in USBGuard's enumeration order (root hubs, then by name length). */
export function usbGuardDevices(tree: HostTree, options: UsbGuardDevicesOptions = {}): UsbGuardDeviceEntry[] {
  const bytesOf = options.bytes ?? recordedAttributeBytes;
  const entries = new Map<string, UsbGuardDeviceEntry>();
  const records = tree
    .devices('usb')
    .filter((record) => isUsbDevice(record) && isPort(sysname(record.devpath)))
    .sort((a, b) => enumerationOrder(sysname(a.devpath), sysname(b.devpath)));
  // Parents sort before their children, so a parent's hash is known when its children need it.
  for (const record of records) entries.set(record.devpath, describe(tree, record, bytesOf, entries));
  return [...entries.values()];
}

/** One device, when it is a usb_device of the tree (`devpath` as sysfs has it, without /sys). */
export function usbGuardDevice(
  tree: HostTree,
  devpath: string,
  options: UsbGuardDevicesOptions = {},
): UsbGuardDeviceEntry | undefined {
  return usbGuardDevices(tree, options).find((entry) => entry.devpath === devpath);
}

function describe(
  tree: HostTree,
  record: RawDeviceRecord,
  bytesOf: UsbAttributeBytes,
  known: ReadonlyMap<string, UsbGuardDeviceEntry>,
): UsbGuardDeviceEntry {
  const port = sysname(record.devpath);
  const isRootHub = ROOT_HUB.test(port);
  const { vendorId, productId } = usbIds(record);
  const nameBytes = trimmed(bytesOf(record, 'product'));
  const serialBytes = trimmed(bytesOf(record, 'serial'));
  const name = nameBytes ? bytesToString([...nameBytes]) : udevName(record, productId);
  const serial = serialBytes ? bytesToString([...serialBytes]) : (record.properties.ID_SERIAL_SHORT ?? '');
  const connectBytes = trimmed(bytesOf(record, 'port/connect_type'));
  const withConnectType = connectBytes ? bytesToString([...connectBytes]) : '';

  let withInterface: readonly string[] = interfacesFromRecords(tree, record);
  let hash: string | undefined;
  let hashUnavailable: string | undefined;
  let invalidDescriptors: string | undefined;
  const descriptors = bytesOf(record, 'descriptors');
  if (!descriptors || descriptors.length === 0) {
    hashUnavailable = 'no descriptors recorded';
  } else {
    try {
      const parsed = parseUsbDescriptors(descriptors, port);
      withInterface = parsed.interfaces;
      const sha = createHash('sha256');
      for (const part of [nameBytes ?? utf8(name), utf8(vendorId), utf8(productId), serialBytes ?? utf8(serial)]) {
        sha.update(part);
      }
      hash = sha.update(parsed.hashInput).digest('base64');
    } catch (error) {
      invalidDescriptors = (error as Error).message;
      hashUnavailable = 'invalid descriptors';
    }
  }

  let parentHash: string | undefined;
  let parentHashUnavailable: string | undefined;
  const parentPath = record.devpath.slice(0, record.devpath.lastIndexOf('/'));
  if (isRootHub) {
    parentHash = createHash('sha256').update(parentPath).digest('base64');
  } else {
    const parent = known.get(parentPath);
    parentHash = parent?.device.hash;
    if (!parent) parentHashUnavailable = 'the parent hub is not recorded';
    else if (parentHash === undefined)
      parentHashUnavailable = `the parent's hash is unknown (${parent.hashUnavailable})`;
  }

  const device: UsbGuardDevice = {
    id: `${vendorId}:${productId}`,
    name,
    serial,
    viaPort: [port],
    withInterface,
    withConnectType,
    ...(hash !== undefined ? { hash } : {}),
    ...(parentHash !== undefined ? { parentHash } : {}),
  };
  const authorized = record.attribute('authorized')?.trim();
  const devnum = record.attribute('devnum')?.trim() ?? record.properties.DEVNUM;
  return {
    devpath: record.devpath,
    port,
    isRootHub,
    device,
    ...(hashUnavailable ? { hashUnavailable } : {}),
    ...(invalidDescriptors ? { invalidDescriptors } : {}),
    ...(parentHashUnavailable ? { parentHashUnavailable } : {}),
    interfaces: interfaceEntries(tree, record),
    ...(authorized === '1' || authorized === '0' ? { authorized: authorized === '1' } : {}),
    ...(devnum !== undefined ? { devnum } : {}),
  };
}

/** udev's copy of the product string; udev puts the hex id there when the device has none. */
function udevName(record: RawDeviceRecord, productId: string): string {
  const enc = record.properties.ID_MODEL_ENC;
  if (enc === undefined) return '';
  const decoded = decodeUdevEscapes(enc).replace(/[ \t]+$/, '');
  return decoded.toLowerCase() === productId ? '' : decoded;
}

/** The interfaces of the active configuration, from their records, in interface number order. */
function interfaceEntries(tree: HostTree, device: RawDeviceRecord): UsbGuardInterfaceEntry[] {
  const prefix = `${device.devpath}/`;
  return tree
    .descendants(device, 'usb')
    .filter((child) => isUsbInterface(child) && !child.devpath.slice(prefix.length).includes('/'))
    .map((child) => ({ name: sysname(child.devpath), devpath: child.devpath, type: interfaceType(child) }))
    .filter((entry): entry is UsbGuardInterfaceEntry => entry.type !== undefined)
    .sort((a, b) => interfaceOrder(a.name, b.name));
}

/** Without descriptors: the interfaces' records, else udev's ID_USB_INTERFACES (deduplicated by udev). */
function interfacesFromRecords(tree: HostTree, device: RawDeviceRecord): string[] {
  const fromRecords = interfaceEntries(tree, device).map((entry) => entry.type);
  if (fromRecords.length > 0) return fromRecords;
  return (device.properties.ID_USB_INTERFACES ?? '')
    .split(':')
    .filter((code) => /^[0-9a-fA-F]{6}$/.test(code))
    .map((code) => code.toLowerCase().replace(/^(..)(..)(..)$/, '$1:$2:$3'));
}

function interfaceType(record: RawDeviceRecord): string | undefined {
  const fromAttributes = ['bInterfaceClass', 'bInterfaceSubClass', 'bInterfaceProtocol'].map((name) => {
    const text = record.attribute(name)?.trim();
    return text !== undefined && /^[0-9a-fA-F]{2}$/.test(text) ? parseInt(text, 16) : NaN;
  });
  const fromUevent = (record.properties.INTERFACE ?? '').split('/').map((n) => (/^\d{1,3}$/.test(n) ? Number(n) : NaN));
  const triple = fromAttributes.every(Number.isFinite) ? fromAttributes : fromUevent;
  if (triple.length !== 3 || !triple.every((n) => Number.isFinite(n) && n <= 255)) return undefined;
  return triple.map((n) => n.toString(16).padStart(2, '0')).join(':');
}

/** `1-1:1.10` after `1-1:1.2`. */
function interfaceOrder(a: string, b: string): number {
  const key = (name: string) =>
    name
      .slice(name.indexOf(':') + 1)
      .split('.')
      .map(Number);
  const [ka, kb] = [key(a), key(b)];
  return ka[0] - kb[0] || ka[1] - kb[1] || (a < b ? -1 : a > b ? 1 : 0);
}

/** USBGuard's enumeration order (ueventEnumerateComparePath): `usbN` first, then shorter names, then by text. */
export function enumerationOrder(a: string, b: string): number {
  const [ra, rb] = [a.startsWith('usb'), b.startsWith('usb')];
  if (ra !== rb) return ra ? -1 : 1;
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

function isPort(name: string): boolean {
  return ROOT_HUB.test(name) || BUSID.test(name);
}

function trimmed(bytes: Uint8Array | undefined): Uint8Array | undefined {
  if (bytes === undefined) return undefined;
  let end = Math.min(bytes.length, MAX_ATTRIBUTE_BYTES);
  while (end > 0 && TRIM_TAIL.has(bytes[end - 1])) end--;
  return bytes.subarray(0, end);
}

function utf8(text: string): Uint8Array {
  return Buffer.from(text, 'utf8');
}

/**
 * A recording's bytes: umockdev's binary attributes (`H:` lines, on RecordedDevice), else the text
 * attribute as UTF-8. Read structurally, so this driver needs no dependency on the recording loaders.
 */
export const recordedAttributeBytes: UsbAttributeBytes = (record, attribute) => {
  const binary = (record as { binaryAttributes?: ReadonlyMap<string, Uint8Array> }).binaryAttributes?.get(attribute);
  if (binary) return binary;
  if (attribute === 'descriptors') return undefined; // never read binary data through the text view
  const text = record.attribute(attribute);
  return text === undefined ? undefined : utf8(text);
};

/**
 * Bytes straight from a sysfs tree (`/sys`, or `sys/` under a --sysroot). Links inside the device
 * directory (`port/connect_type`) are followed only while they stay inside the tree.
 */
export function sysfsAttributeBytes(sysRoot: string): UsbAttributeBytes {
  const root = path.resolve(sysRoot);
  let realRoot: string | undefined;
  return (record, attribute) => {
    if (!isSafeRelative(record.devpath.slice(1)) || !isSafeRelative(attribute)) return undefined;
    const file = path.join(root, record.devpath, attribute);
    try {
      realRoot ??= fs.realpathSync(root);
      const real = fs.realpathSync(file);
      if (!real.startsWith(realRoot + path.sep)) return undefined;
      const fd = fs.openSync(real, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      try {
        const buffer = Buffer.alloc(MAX_ATTRIBUTE_BYTES);
        const n = fs.readSync(fd, buffer, 0, buffer.length, 0);
        return buffer.subarray(0, n);
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      return recordedAttributeBytes(record, attribute);
    }
  };
}

function isSafeRelative(name: string): boolean {
  return name.length > 0 && !name.includes('\0') && name.split('/').every((p) => p !== '' && p !== '.' && p !== '..');
}
