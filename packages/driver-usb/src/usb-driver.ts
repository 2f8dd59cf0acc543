import { type Observable, finalize, map } from 'rxjs';
import {
  type AttachSpec,
  type DeviceClassDriver,
  type DeviceInfo,
  type DeviceSource,
  PLUGIN_API_VERSION,
} from '@devgate/core';
import { parseUsbDevices } from './parse-usb-devices.js';
import { usbAttachSpec } from './usb-attach.js';
import { type UsbNames, systemUsbNames } from './usb-ids.js';

/** Whole USB devices by busid (hubs and root hubs excluded), passed through as QEMU usb-host devices. */
export class UsbDriver implements DeviceClassDriver {
  readonly id = 'usb';
  readonly manifest = { apiVersion: PLUGIN_API_VERSION, description: 'USB devices, by port (busid)' };

  /** What each backend lists now (the kernel holds the same lists): an attach by id looks for twins. */
  private readonly listed = new Map<string, readonly DeviceInfo[]>();

  /** `names` defaults to the host's usb.ids, read on the first device that needs a name. */
  constructor(private readonly names: UsbNames = systemUsbNames()) {}

  discover(source: DeviceSource): Observable<readonly DeviceInfo[]> {
    return source.trees$.pipe(
      map((tree) => {
        const devices = parseUsbDevices(tree, source.backend, this.names);
        this.listed.set(source.backend, devices);
        return devices;
      }),
      // A backend no longer read lists nothing: its last devices are no one's twins.
      finalize(() => this.listed.delete(source.backend)),
    );
  }

  /** `usb-host` by port, or by vendor and product id with `by=id` (see usb-attach.ts). */
  attachSpec(device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec {
    return usbAttachSpec(device, options, this.listed.get(device.port.backend));
  }
}
