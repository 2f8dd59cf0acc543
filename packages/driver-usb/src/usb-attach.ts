import { type AttachSpec, type DeviceInfo, DriverContractError, Errors, portLabel } from '@devgate/core';

const BUSID = /^(\d{1,3})-(\d{1,3}(?:\.\d{1,3}){0,6})$/;
const HEX4 = /^[0-9a-f]{4}$/;

/**
 * How a USB device is handed to a VM: QEMU's `usb-host` (kind `usb-host`), selected by where it is
 * plugged in (`hostbus` + `hostport`, the default) or, with `by=id`, by what it is (`vendorid` +
 * `productid`: QEMU then takes the device whenever it shows up, in any port).
 *
 * Options, with Qubes' wording for unknown ones (`Unsupported option <name>`):
 *   by=port|id   how QEMU finds the device on the host (default port).
 *
 * The parameters address the device on the host QEMU runs on, so this is real passthrough only when
 * the backend domain is that host; a USB VM backend needs a USB/IP transport instead (Qubes' way).
 */
export function usbAttachSpec(
  device: DeviceInfo,
  options: Readonly<Record<string, string>>,
  /** The devices its backend lists now: by=id is refused when another has the same ids. */
  listed?: readonly DeviceInfo[],
): AttachSpec {
  let by: 'port' | 'id' = 'port';
  for (const [option, value] of Object.entries(options)) {
    switch (option) {
      case 'by':
        if (value !== 'port' && value !== 'id') {
          throw Errors.unsupportedOption({ option, message: "by option can only have 'port' or 'id' value" });
        }
        by = value;
        break;
      default:
        throw Errors.unsupportedOption({ option });
    }
  }
  const busid = BUSID.exec(device.port.portId);
  if (!busid) throw new DriverContractError('usb', `port '${device.port.portId}' is not a USB busid`);
  if (by === 'id') {
    const vendor = String(device.data['vendor-id'] ?? '');
    const product = String(device.data['product-id'] ?? '');
    // QEMU reads 0 as "any": an unknown id would pass through whatever is plugged in next.
    if (!HEX4.test(vendor) || !HEX4.test(product) || vendor === '0000' || product === '0000') {
      throw Errors.usbIdUnknown({ device: portLabel(device.port) });
    }
    // QEMU's filter has only these two ids: with a twin in the backend it may take the twin (one the
    // host has mounted, or another VM holds) instead of the device that was checked and listed.
    const twin = listed?.find(
      (other) =>
        other.port.portId !== device.port.portId &&
        other.data['vendor-id'] === vendor &&
        other.data['product-id'] === product,
    );
    if (twin) throw Errors.usbIdAmbiguous({ device: portLabel(device.port), twin: portLabel(twin.port) });
    return {
      kind: 'usb-host',
      params: { vendorid: parseInt(vendor, 16), productid: parseInt(product, 16) },
      options: { by: 'id' },
    };
  }
  const busnum = device.data.busnum;
  const hostbus = typeof busnum === 'number' && Number.isInteger(busnum) && busnum > 0 ? busnum : Number(busid[1]);
  if (hostbus !== Number(busid[1])) {
    throw new DriverContractError('usb', `busnum ${hostbus} does not match busid ${device.port.portId}`);
  }
  return { kind: 'usb-host', params: { hostbus, hostport: busid[2] }, options: {} };
}
