/**
 * A USB device's raw descriptors, as sysfs shows them in `descriptors` (the device descriptor, then
 * every configuration with its interface, endpoint and class-specific descriptors) and umockdev
 * records them (`H: descriptors=...`). The bytes come from the device: this is a parser boundary.
 *
 * It reads them the way USBGuard 1.1.2 does (USBDescriptorParser and DevicePrivate), because what it
 * yields has to match USBGuard's rules:
 *
 *  - descriptors follow each other as `bLength bDescriptorType ...`; a bLength under 2, a header or
 *    body cut short by the end of the data, and a device (18 bytes), configuration (9), interface (9)
 *    or endpoint (7, or 9 for audio) descriptor of another size are errors;
 *  - a configuration needs a device descriptor before it, an interface a configuration, an endpoint
 *    an interface, and there is one device descriptor only;
 *  - every interface descriptor adds its `cc:ss:pp`, alternate settings and later configurations
 *    included, in the order they come (USBGuard's `with-interface` list does the same);
 *  - other descriptor types (strings, interface associations, class-specific ones) are skipped.
 *
 * `hashInput` is what USBGuard feeds into the device hash after the name, ids and serial: every
 * descriptor's bytes in order, which is the whole input once it parsed, except that a Linux root
 * hub's device descriptor (1d6b:0001, 0002 or 0003) has its bcdDevice (the kernel version) zeroed,
 * so that the hash survives kernel updates.
 */
import { Errors } from '@devgate/core';

export interface UsbDescriptors {
  readonly vendorId: number;
  readonly productId: number;
  readonly bcdDevice: number;
  readonly deviceClass: number;
  /** One `cc:ss:pp` (lowercase hex) per interface descriptor, in descriptor order. */
  readonly interfaces: readonly string[];
  readonly configurations: number;
  /** The bytes USBGuard hashes (see above). */
  readonly hashInput: Uint8Array;
}

/** Far above any real device (a webcam's are a few KiB); sysfs serves at most 64 KiB here anyway. */
export const MAX_DESCRIPTOR_BYTES = 256 * 1024;

const DEVICE = 1;
const CONFIGURATION = 2;
const INTERFACE = 4;
const ENDPOINT = 5;
const LINUX_FOUNDATION = 0x1d6b;

/** Throws DG_USB_DESCRIPTORS_INVALID, naming `device` (a busid) in the message. */
export function parseUsbDescriptors(bytes: Uint8Array, device = 'device'): UsbDescriptors {
  const fail = (reason: string, at?: number): never => {
    throw Errors.usbDescriptorsInvalid({ device, reason: at === undefined ? reason : `${reason} at byte ${at}` });
  };
  if (bytes.length > MAX_DESCRIPTOR_BYTES)
    fail(`${bytes.length} bytes of descriptors (at most ${MAX_DESCRIPTOR_BYTES})`);
  const hashInput = Uint8Array.from(bytes);
  const interfaces: string[] = [];
  let header: { vendorId: number; productId: number; bcdDevice: number; deviceClass: number } | undefined;
  let inConfiguration = false;
  let inInterface = false;
  let configurations = 0;
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < 2) fail('a descriptor header is cut short', at);
    const length = bytes[at];
    const type = bytes[at + 1];
    if (length < 2) fail(`bLength ${length} is shorter than a header`, at);
    if (at + length > bytes.length) fail(`bLength ${length} runs past the end of the data`, at);
    const word = (offset: number) => bytes[at + offset] | (bytes[at + offset + 1] << 8);
    switch (type) {
      case DEVICE:
        if (length !== 18) fail(`a device descriptor of ${length} bytes`, at);
        if (header) fail('a second device descriptor', at);
        header = { vendorId: word(8), productId: word(10), bcdDevice: word(12), deviceClass: bytes[at + 4] };
        // A root hub's bcdDevice is zeroed in the hash input only; the header keeps the real value.
        if (header.vendorId === LINUX_FOUNDATION && header.productId >= 1 && header.productId <= 3) {
          hashInput[at + 12] = 0;
          hashInput[at + 13] = 0;
        }
        break;
      case CONFIGURATION:
        if (length !== 9) fail(`a configuration descriptor of ${length} bytes`, at);
        if (!header) fail('a configuration descriptor before the device descriptor', at);
        inConfiguration = true;
        inInterface = false;
        configurations++;
        break;
      case INTERFACE: {
        if (length !== 9) fail(`an interface descriptor of ${length} bytes`, at);
        if (!inConfiguration) fail('an interface descriptor outside a configuration', at);
        inInterface = true;
        interfaces.push([bytes[at + 5], bytes[at + 6], bytes[at + 7]].map(hex2).join(':'));
        break;
      }
      case ENDPOINT:
        if (length !== 7 && length !== 9) fail(`an endpoint descriptor of ${length} bytes`, at);
        if (!inInterface) fail('an endpoint descriptor outside an interface', at);
        break;
      default:
        // Strings, interface associations, class-specific and vendor descriptors: hashed, not read.
        break;
    }
    at += length;
  }
  if (!header) return fail('no device descriptor');
  return { ...header, interfaces, configurations, hashInput };
}

function hex2(value: number): string {
  return value.toString(16).padStart(2, '0');
}
