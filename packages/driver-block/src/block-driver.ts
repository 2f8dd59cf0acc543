import { type Observable, map } from 'rxjs';
import {
  type AttachSpec,
  type DeviceClassDriver,
  type DeviceInfo,
  type DeviceSource,
  PLUGIN_API_VERSION,
} from '@devgate/core';
import { blockAttachSpec } from './block-attach.js';
import { parseBlockDevices } from './parse-block-devices.js';

/** Disks and partitions: sd, nvme, mmcblk, vd, loop, sr, dm. */
export class BlockDriver implements DeviceClassDriver {
  readonly id = 'block';
  readonly manifest = { apiVersion: PLUGIN_API_VERSION, description: 'block devices: disks and partitions' };

  discover(source: DeviceSource): Observable<readonly DeviceInfo[]> {
    return source.trees$.pipe(map((tree) => parseBlockDevices(tree, source.backend)));
  }

  attachSpec(device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec {
    return blockAttachSpec(device, options);
  }
}
