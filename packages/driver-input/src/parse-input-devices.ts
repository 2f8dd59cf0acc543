/**
 * Input devices of one backend, from its host tree: the input class's parser boundary, where the
 * strings a device chose (its name, udev's copies of its descriptors, its serial) are sanitized.
 *
 * One entry per *physical* device, with its event nodes grouped under it: a keyboard whose media keys
 * are a second USB interface, a touchpad with a pointing stick, a receiver with a keyboard and a mouse
 * are each one device, so a question about it is asked once. The physical device of an input device
 * (`inputN`) is found from its sysfs path: its parent, past HID devices (`0003:046D:C52B.0003`), and
 * from a USB interface up to the USB device. Ports are that device's name: the USB busid (`1-1.5.4.2`,
 * as in the USB class), `serio1`, `i2c-SYNA3105_00`, `card0`, `hci0_256`; devices of no parent
 * (`/devices/virtual/input/input11`, uinput) by their own name.
 *
 * Classes come from udev's ID_INPUT_* where udev ran, and from the kernel's capability bitmaps with
 * udev's own algorithm where it did not (parse-input-capabilities.ts). A device under USB has that
 * USB device as `parent`, so attaching one while the other is attached elsewhere is refused.
 */
import {
  type DataValue,
  type DeviceInfo,
  HostTree,
  type InterfaceCode,
  type Port,
  type RawDeviceRecord,
  type SafeText,
  decodeUdevEscapes,
  isUsbInterface,
  recordOf,
  sanitizeText,
  sysname,
  usbDeviceId,
  usbIds,
  usbInterfaces,
  usbPlacement,
  compareNatural,
} from '@devgate/core';
import {
  INPUT_CLASSES,
  type InputClass,
  type QubesInputService,
  QUBES_INPUT_SERVICES,
  busName,
  classesOf,
  inputInterface,
  primaryClass,
  qubesServiceOf,
} from './input-class.js';
import {
  BUS_USB,
  type InputCapabilities,
  type InputFlag,
  INPUT_FLAGS,
  inputIdFlags,
  readCapabilities,
  udevInputFlags,
} from './parse-input-capabilities.js';

export const INPUT_CLASS_ID = 'input';

/** One event node (`eventN`) of an input device, classified. */
export interface InputNode {
  /** The input device (`/devices/.../input/input5`). */
  readonly devpath: string;
  /** `event5`; undefined for an input device with no event node. */
  readonly event?: string;
  /** `13:69`, the event node's character device. */
  readonly majorMinor?: string;
  readonly name?: SafeText;
  readonly bustype: number;
  readonly caps: InputCapabilities;
  readonly flags: ReadonlySet<InputFlag>;
  /** Where the flags came from: udev's properties, or the kernel's bitmaps read as udev would. */
  readonly classifiedBy: 'udev' | 'capabilities';
  readonly classes: readonly InputClass[];
  readonly service?: QubesInputService;
}

export interface ParseInputOptions {
  /** Ignore udev's ID_INPUT_* and classify from the bitmaps (tests compare both). */
  readonly ignoreUdev?: boolean;
  /** The backend kernel's word size, when known (this host's); found from the text otherwise. */
  readonly wordBits?: 32 | 64;
}

const INPUT_DEVICE = /^input\d{1,6}$/;
const EVENT_NODE = /^event\d{1,6}$/;
const HID_DEVICE = /^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{1,8}$/;
const USB_INTERFACE = /^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}:\d{1,3}\.\d{1,3}$/;
const BUSID = /^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}$/;

/** Every physical input device of a backend, by port. */
export function parseInputDevices(tree: HostTree, backend: string, options: ParseInputOptions = {}): DeviceInfo[] {
  const groups = new Map<string, RawDeviceRecord[]>();
  for (const input of tree.devices('input')) {
    if (!INPUT_DEVICE.test(sysname(input.devpath))) continue;
    const key = physicalPath(input.devpath);
    const members = groups.get(key) ?? [];
    members.push(input);
    groups.set(key, members);
  }
  const taken = new Set<string>();
  const result: DeviceInfo[] = [];
  for (const [physical, inputs] of [...groups].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    inputs.sort((a, b) => compareNatural(sysname(a.devpath), sysname(b.devpath)));
    const nodes = inputs.map((input) => readNode(tree, input, options));
    let portId = portIdOf(physical, inputs[0].devpath);
    // Two physical devices with the same name (never seen, but names are the device's own): both stay listed.
    for (let n = 2; taken.has(portId); n++) portId = `${portIdOf(physical, inputs[0].devpath)}-${n}`;
    taken.add(portId);
    result.push(toDeviceInfo(tree, backend, portId, physical, nodes));
  }
  return result.sort((a, b) => compareNatural(a.port.portId, b.port.portId));
}

/**
 * The physical device an input device belongs to: its parent past HID devices, and the USB device
 * of a USB interface. An input device with no parent device of its own (`/devices/virtual/input/inputN`)
 * is its own physical device.
 */
export function physicalPath(inputDevpath: string): string {
  const parts = inputDevpath.split('/');
  // .../<parent>/input/inputN
  let end = parts.length - 1;
  if (parts[end - 1] === 'input') end--;
  while (end > 2 && HID_DEVICE.test(parts[end - 1])) end--;
  if (end > 2 && USB_INTERFACE.test(parts[end - 1])) end--;
  const parent = parts.slice(0, end).join('/');
  if (parent === '/devices/virtual' || parent === '/devices' || end <= 2) return inputDevpath;
  return parent;
}

/** The physical device's name as a port id: no `:` (it separates the device id in arguments). */
function portIdOf(physical: string, firstInput: string): string {
  const name = physical === firstInput ? sysname(firstInput) : sysname(physical);
  const clean = name
    .replace(/:/g, '_')
    .replace(/[^A-Za-z0-9_.-]/g, '_')
    .slice(0, 48);
  return clean === '' ? 'input' : clean;
}

function readNode(tree: HostTree, input: RawDeviceRecord, options: ParseInputOptions): InputNode {
  const event = tree.descendants(input, 'input').find((child) => EVENT_NODE.test(sysname(child.devpath)));
  const caps = readCapabilities(input, options.wordBits);
  const fromUdev = options.ignoreUdev
    ? undefined
    : (udevInputFlags(input.properties) ?? (event ? udevInputFlags(event.properties) : undefined));
  const flags = fromUdev ?? inputIdFlags(caps);
  const { MAJOR, MINOR } = event?.properties ?? {};
  const dev = MAJOR !== undefined && MINOR !== undefined ? `${MAJOR}:${MINOR}` : event?.attribute('dev')?.trim();
  return {
    devpath: input.devpath,
    event: event ? sysname(event.devpath) : undefined,
    majorMinor: dev !== undefined && /^\d{1,4}:\d{1,7}$/.test(dev) ? dev : undefined,
    name: sanitizeText(unquote(input.attribute('name') ?? input.properties.NAME)),
    bustype: caps.bustype,
    caps,
    flags,
    classifiedBy: fromUdev ? 'udev' : 'capabilities',
    classes: classesOf(flags, caps),
    service: qubesServiceOf(flags, caps),
  };
}

function toDeviceInfo(
  tree: HostTree,
  backend: string,
  portId: string,
  physical: string,
  nodes: readonly InputNode[],
): DeviceInfo {
  const classes = INPUT_CLASSES.filter((c) => nodes.some((n) => n.classes.includes(c)));
  const cls = primaryClass(classes);
  // The node that gives the device its class names it ("USB Keyboard", not its "Consumer Control").
  const main = nodes.find((n) => n.classes.includes(cls)) ?? nodes[0];
  const usb = usbPlacement(tree, tree.device(main.devpath) ?? recordOf(main.devpath, 'input', {}));
  const interfaces: InterfaceCode[] = [];
  for (const c of INPUT_CLASSES) {
    for (const node of nodes) {
      const code = inputInterface(c, node.bustype);
      if (node.classes.includes(c) && !interfaces.includes(code)) interfaces.push(code);
    }
  }
  const services = QUBES_INPUT_SERVICES.filter((s) => nodes.some((n) => n.service === s));
  const events = nodes.filter((n) => n.event !== undefined);
  const bustype = main.bustype;
  const [, vendorHex, productHex] = (tree.device(main.devpath)?.properties.PRODUCT ?? '').split('/');
  const data: Record<string, DataValue> = {
    'input-class': cls,
    'input-classes': classes.join(','),
    bus: busName(bustype),
    'vendor-id': hex4(vendorHex) ?? '0000',
    'product-id': hex4(productHex) ?? '0000',
    'event-nodes': events.map((n) => n.event).join(','),
    'event-devices': events.map((n) => n.majorMinor ?? '?').join(','),
    // The kernel numbers input devices once and never again (input7 replugged is input8), while an
    // event node's name and number are reused: this is what tells a replug from the same device.
    'input-instances': events.map((n) => sysname(n.devpath)).join(','),
    'qubes-services': services.join(','),
    'qubes-calls': events
      .map((n) => (n.service ? `${n.service}${qubesArgument(tree.device(n.devpath))}` : ''))
      .join(','),
    'classified-by': nodes.every((n) => n.classifiedBy === 'udev')
      ? 'udev'
      : nodes.every((n) => n.classifiedBy === 'capabilities')
        ? 'capabilities'
        : 'udev,capabilities',
    // Qubes' input proxy (90-qubes-input-proxy.rules) never forwards these: the machine's own.
    'built-in': isBuiltIn(physical, tree.device(main.devpath)),
    'input-flags': nodes.map((n) => INPUT_FLAGS.filter((f) => n.flags.has(f)).join('+') || '-').join(','),
  };
  const record = tree.device(main.devpath);
  let vendor: SafeText | undefined;
  let product: SafeText | undefined = main.name;
  let manufacturer: SafeText | undefined;
  let serial = sanitizeText(record?.attribute('uniq') ?? unquote(record?.properties.UNIQ));
  let deviceId: string | undefined;
  // Under a USB device (a USB keyboard, or a Bluetooth one behind a USB adapter): that device is the
  // parent, so attaching one refuses the other.
  const parent: Port | undefined =
    usb && BUSID.test(usb.portId) ? { devclass: 'usb', backend, portId: usb.portId } : undefined;
  if (usb && parent && bustype === BUS_USB) {
    const devpath = usbDevicePath(main.devpath, usb.portId);
    const usbTree = usb.device ? tree : withInferredUsbDevice(tree, devpath);
    const usbDevice = usb.device ?? usbTree.device(devpath);
    const names = usbNames(usbDevice, record);
    ({ vendor, manufacturer } = names);
    product = names.product ?? main.name;
    serial = names.serial;
    if (usbDevice) {
      const ids = usbIds(usbDevice);
      data['vendor-id'] = ids.vendorId;
      data['product-id'] = ids.productId;
      const usbCodes = usbInterfaces(usbTree, usbDevice);
      interfaces.push(...usbCodes.filter((c) => !interfaces.includes(c)));
      const warning = badUsbWarning(cls, usbCodes);
      if (warning) data.warning = warning;
      // The USB class's identity: an assignment by device id follows it from port to port, in both classes.
      deviceId = usbDeviceId(usbTree, usbDevice);
    }
  }
  deviceId ??= ownDeviceId(data, record, interfaces);
  return {
    port: { devclass: INPUT_CLASS_ID, backend, portId },
    deviceId,
    vendor,
    product,
    manufacturer,
    name: main.name,
    serial,
    interfaces,
    parent,
    hiddenReason: events.length === 0 ? 'no event device (nothing to pass through)' : undefined,
    data,
  };
}

/** `vvvv:pppp:uniq:interfaces` for a device that is not a USB device of its own (PS/2, I2C, Bluetooth). */
function ownDeviceId(
  data: Readonly<Record<string, DataValue>>,
  record: RawDeviceRecord | undefined,
  interfaces: readonly InterfaceCode[],
): string {
  const uniq = sanitizeText(record?.attribute('uniq') ?? unquote(record?.properties.UNIQ));
  const own = interfaces.filter((code) => code.startsWith('i'));
  return `${String(data['vendor-id'])}:${String(data['product-id'])}:${uniq?.replace(/[^A-Za-z0-9_.+-]/g, '_') ?? ''}:${own.join('')}`;
}

/** The USB device's path from an input device under it: the devpath up to the busid. */
function usbDevicePath(inputDevpath: string, busid: string): string {
  const parts = inputDevpath.split('/');
  return parts.slice(0, parts.lastIndexOf(busid) + 1).join('/');
}

/**
 * A udev dump can lack the USB device's own record while its interfaces are there; the device is
 * rebuilt from them as the USB class does (PRODUCT and TYPE are on every interface's uevent).
 */
function withInferredUsbDevice(tree: HostTree, devpath: string): HostTree {
  const usbInterface = tree
    .devices('usb')
    .find(
      (r) =>
        isUsbInterface(r) && r.devpath.startsWith(devpath + '/') && !r.devpath.slice(devpath.length + 1).includes('/'),
    );
  if (!usbInterface || !BUSID.test(sysname(devpath))) return tree;
  const { PRODUCT, TYPE } = usbInterface.properties;
  const properties: Record<string, string> = { SUBSYSTEM: 'usb', DEVTYPE: 'usb_device' };
  if (PRODUCT !== undefined) properties.PRODUCT = PRODUCT;
  if (TYPE !== undefined) properties.TYPE = TYPE;
  return new HostTree([...tree.devices(), recordOf(devpath, 'usb', properties)], tree.usage);
}

/** The USB device's strings: its descriptors in sysfs, else udev's copies (on it or on the input device). */
function usbNames(
  usbDevice: RawDeviceRecord | undefined,
  input: RawDeviceRecord | undefined,
): { vendor?: SafeText; product?: SafeText; manufacturer?: SafeText; serial?: SafeText } {
  const ids = usbDevice ? usbIds(usbDevice) : undefined;
  const descriptor = (attribute: 'manufacturer' | 'product', enc: 'ID_VENDOR_ENC' | 'ID_MODEL_ENC', id?: string) => {
    const fromSysfs = sanitizeText(usbDevice?.attribute(attribute));
    if (fromSysfs) return fromSysfs;
    const raw = usbDevice?.properties[enc] ?? input?.properties[enc];
    if (raw === undefined) return undefined;
    const decoded = decodeUdevEscapes(raw);
    // With no string descriptor udev puts the hex id there: not a name.
    return decoded.trim().toLowerCase() === id ? undefined : sanitizeText(decoded);
  };
  const manufacturer = descriptor('manufacturer', 'ID_VENDOR_ENC', ids?.vendorId);
  const product = descriptor('product', 'ID_MODEL_ENC', ids?.productId);
  const fromDatabase = (key: string) => sanitizeText(usbDevice?.properties[key] ?? input?.properties[key]);
  return {
    manufacturer,
    vendor: manufacturer ?? fromDatabase('ID_VENDOR_FROM_DATABASE'),
    product: product ?? fromDatabase('ID_MODEL_FROM_DATABASE'),
    serial: sanitizeText(usbDevice?.properties.ID_SERIAL_SHORT ?? usbDevice?.attribute('serial')),
  };
}

/**
 * USBGuard's documented rule: "a USB flash disk which implements a keyboard or a network interface is
 * very suspicious". An input device whose USB device also offers mass storage (08) or networking (02
 * CDC, 0a CDC data, e0 wireless) is flagged wherever it is shown.
 */
export function badUsbWarning(cls: InputClass, usbCodes: readonly InterfaceCode[]): string | undefined {
  if (!usbCodes.some((c) => c.startsWith('u03'))) return undefined;
  const also = [
    usbCodes.some((c) => c.startsWith('u08')) ? 'USB storage' : undefined,
    usbCodes.some((c) => /^u(02|0a|e0)/.test(c)) ? 'a network adapter' : undefined,
  ].filter((x) => x !== undefined);
  if (also.length === 0) return undefined;
  const what = cls === 'other' ? 'input device' : cls;
  return `BadUSB? this ${what} is also ${also.join(' and ')} in one USB device`;
}

/**
 * The argument Qubes' input trigger gives its call (`input-proxy-arg`): `+PORT+PRODUCT+UNIQ`, the port
 * being PHYS up to its last `/` with `:` as `_`, PRODUCT with `/` as `-`. Anything outside qrexec's
 * argument characters (the device chose PHYS of a uinput device, and UNIQ) becomes `_`.
 */
export function qubesArgument(record: RawDeviceRecord | undefined): string {
  const safe = (text: string) =>
    text
      .replace(/:/g, '_')
      .replace(/[^A-Za-z0-9._-]/g, '_')
      .slice(0, 64);
  const phys = unquote(record?.attribute('phys') ?? record?.properties.PHYS) ?? '';
  const port = phys.includes('/') ? phys.slice(0, phys.lastIndexOf('/')) : phys;
  const product = (record?.properties.PRODUCT ?? '').replace(/\//g, '-');
  const uniq = unquote(record?.attribute('uniq') ?? record?.properties.UNIQ) ?? '';
  return `+${safe(port)}+${safe(product)}+${safe(uniq)}`;
}

/** i8042, ACPI and platform devices (udev's ID_PATH `platform-*`, `acpi-*`), as Qubes' proxy rules skip them. */
function isBuiltIn(physical: string, record: RawDeviceRecord | undefined): boolean {
  const idPath = record?.properties.ID_PATH;
  if (idPath !== undefined) return /^(platform-|acpi-)/.test(idPath) || idPath.includes('i8042');
  return physical.startsWith('/devices/platform/') || physical.startsWith('/devices/LNXSYSTM:');
}

function unquote(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  return text.length >= 2 && text.startsWith('"') && text.endsWith('"') ? text.slice(1, -1) : text;
}

function hex4(text: string | undefined): string | undefined {
  const clean = text?.trim().toLowerCase();
  return clean !== undefined && /^[0-9a-f]{1,4}$/.test(clean) ? clean.padStart(4, '0') : undefined;
}
