import { type Observable, map } from 'rxjs';
import {
  type AttachSpec,
  type DeviceClassDriver,
  type DeviceInfo,
  type DeviceSource,
  PLUGIN_API_VERSION,
} from '@devgate/core';
import { pciAttachSpec } from './pci-attach.js';
import { parsePciDevices } from './pci-devices.js';
import { type PciNames, systemPciNames } from './pci-ids.js';

/**
 * Every PCI function of a backend, by Qubes 4.3's PCI path (`00_14.0`, `00_08.1-00_00.3`), handed to
 * VMs through VFIO. Bridges and the functions the host needs are listed hidden, with the reason.
 */
export class PciDriver implements DeviceClassDriver {
  readonly id = 'pci';
  readonly manifest = { apiVersion: PLUGIN_API_VERSION, description: 'PCI devices, by path, passed through with VFIO' };

  /** `names` defaults to the host's pci.ids (hwdata), read on the first device that needs a name. */
  constructor(private readonly names: PciNames = systemPciNames()) {}

  discover(source: DeviceSource): Observable<readonly DeviceInfo[]> {
    return source.trees$.pipe(map((tree) => parsePciDevices(tree, source.backend, this.names)));
  }

  /** `vfio-pci`, with Qubes' no-strict-reset and permissive options (see pci-attach.ts). */
  attachSpec(device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec {
    return pciAttachSpec(device, options);
  }
}
