/**
 * Serial ports as devgate's class `serial`: USB serial adapters (ttyUSB*: ftdi_sio, cp210x, pl2303,
 * ch341...), CDC ACM modems and boards (ttyACM*), and this host's UARTs (ttyS*, where one answered at
 * boot). A VM gets one as a chardev on the port's node plus QEMU's `usb-serial`, through the generic
 * `qemu-device` attach kind; the node is the backend's to find (by major:minor), never this driver's.
 *
 * Everything read from the tree is untrusted (a backend VM's agent sends it): names are sanitized,
 * ids and numbers are checked against what they must look like, and anything else is dropped.
 */
import { type Observable, map } from 'rxjs';
import {
  type AttachSpec,
  type DeviceClassDriver,
  type DeviceInfo,
  type DeviceSource,
  Errors,
  type HostTree,
  type InterfaceCode,
  PLUGIN_API_VERSION,
  type RawDeviceRecord,
  type SafeText,
  qemuDeviceSpec,
  sanitizeText,
  sysname,
  usbSerial,
  compareNatural,
} from '@devgate/core';

const PORT_NAME = /^tty(S|USB|ACM)\d{1,4}$/;
const NUMBER = /^\d{1,8}$/;
const HEX2 = /^[0-9a-f]{2}$/i;
const HEX4 = /^[0-9a-f]{4}$/i;
const USB_PORT = /^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}$/;
/** QEMU's serial devices that can be hot-plugged (isa-serial cannot: the ISA bus has no hotplug). */
const MODELS = ['usb-serial'];

export class SerialDriver implements DeviceClassDriver {
  readonly id = 'serial';
  readonly manifest = {
    apiVersion: PLUGIN_API_VERSION,
    description: 'Serial ports: USB serial adapters, CDC ACM devices and UARTs',
    // Every source that reads sysfs lists /sys/class/tty too.
    subsystems: ['tty'],
  };

  discover(source: DeviceSource): Observable<readonly DeviceInfo[]> {
    return source.trees$.pipe(map((tree) => parseSerialPorts(tree, source.backend)));
  }

  /** `-o model=usb-serial` (the default, and the only one QEMU can add to a running VM). */
  attachSpec(_device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec {
    for (const [option, value] of Object.entries(options)) {
      if (option !== 'model') throw Errors.unsupportedOption({ option });
      if (!MODELS.includes(value)) {
        throw Errors.unsupportedOption({ option, message: `model option can only have ${MODELS.join(', ')} value` });
      }
    }
    return qemuDeviceSpec({ device: 'usb-serial', chardev: 'serial', hostNode: 'char' }, { model: 'usb-serial' });
  }
}

/** The serial ports of one tree, sorted by name (ttyACM0, ttyS0, ttyS4, ttyUSB0, ttyUSB10). */
export function parseSerialPorts(tree: HostTree, backend: string): DeviceInfo[] {
  const ports: DeviceInfo[] = [];
  for (const record of tree.devices('tty')) {
    const name = sysname(record.devpath);
    const { MAJOR, MINOR } = record.properties;
    if (!PORT_NAME.test(name) || record.devpath.startsWith('/devices/virtual/')) continue;
    if (!NUMBER.test(MAJOR ?? '') || !NUMBER.test(MINOR ?? '')) continue;
    const data = { 'major-minor': `${MAJOR}:${MINOR}`, tty: name };
    const usb = usbParent(tree, record);
    if (usb) {
      const ids = `${usb.vendorId}:${usb.productId}`;
      ports.push({
        port: { devclass: 'serial', backend, portId: name },
        deviceId: `${ids}:${usb.idSerial ?? ''}:${usb.interface}`,
        vendor: usb.vendor,
        product: usb.product,
        serial: usb.serial,
        name: usb.product,
        interfaces: [usb.interface],
        parent: { devclass: 'usb', backend, portId: usb.busid },
        data: { ...data, 'vendor-id': usb.vendorId, 'product-id': usb.productId },
      });
      continue;
    }
    // A UART: one of the 8250 driver's placeholders has no chip behind it (type 0, unknown).
    const type = record.attribute('type');
    if (record.devpath.startsWith('/devices/platform/serial8250/') && (type === undefined || type === '0')) continue;
    ports.push({
      port: { devclass: 'serial', backend, portId: name },
      deviceId: `uart:${name}`,
      name: sanitizeText(`UART ${name}`),
      interfaces: ['?******'],
      data,
    });
  }
  return ports.sort((a, b) => compareNatural(a.port.portId, b.port.portId));
}

interface UsbParent {
  busid: string;
  vendorId: string;
  productId: string;
  vendor?: SafeText;
  product?: SafeText;
  serial?: SafeText;
  /** The serial as the USB class puts it in a device id: id characters only, so `:` still splits fields. */
  idSerial?: string;
  interface: InterfaceCode;
}

/** The USB device a port belongs to, with the class of its interface (`u020201` for CDC ACM). */
function usbParent(tree: HostTree, record: RawDeviceRecord): UsbParent | undefined {
  let iface: RawDeviceRecord | undefined;
  for (const ancestor of tree.ancestors(record)) {
    if (ancestor.subsystem !== 'usb') continue;
    if (ancestor.properties.DEVTYPE === 'usb_interface') iface ??= ancestor;
    if (ancestor.properties.DEVTYPE !== 'usb_device') continue;
    const busid = sysname(ancestor.devpath);
    const vendorId = ancestor.attribute('idVendor')?.toLowerCase();
    const productId = ancestor.attribute('idProduct')?.toLowerCase();
    if (!USB_PORT.test(busid) || !HEX4.test(vendorId ?? '') || !HEX4.test(productId ?? '')) return undefined;
    const klass = ['Class', 'SubClass', 'Protocol'].map((part) => iface?.attribute(`bInterface${part}`) ?? '');
    return {
      busid,
      vendorId: vendorId!,
      productId: productId!,
      vendor: sanitizeText(ancestor.attribute('manufacturer') ?? ancestor.properties.ID_VENDOR_FROM_DATABASE),
      product: sanitizeText(ancestor.attribute('product') ?? ancestor.properties.ID_MODEL_FROM_DATABASE),
      serial: sanitizeText(ancestor.attribute('serial'), 64),
      idSerial: usbSerial(ancestor),
      interface: (klass.every((hex) => HEX2.test(hex))
        ? `u${klass.join('').toLowerCase()}`
        : 'u******') as InterfaceCode,
    };
  }
  return undefined;
}
