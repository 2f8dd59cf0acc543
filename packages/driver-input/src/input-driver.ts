import { type Observable, map } from 'rxjs';
import {
  type AttachSpec,
  type DeviceClassDriver,
  type DeviceInfo,
  type DeviceSource,
  PLUGIN_API_VERSION,
} from '@devgate/core';
import { INPUT_CLASS_ID, type ParseInputOptions, parseInputDevices } from './parse-input-devices.js';
import { inputAttachSpec } from './input-attach.js';

/**
 * Keyboards, mice, tablets, touchpads, touchscreens and joysticks, one entry per physical device, passed
 * to VMs as QEMU `input-linux` objects (evdev passthrough with a grab-toggle hotkey).
 */
export class InputDriver implements DeviceClassDriver {
  readonly id = INPUT_CLASS_ID;
  readonly manifest = {
    apiVersion: PLUGIN_API_VERSION,
    description: 'Input devices (keyboards, mice, tablets), one per physical device, with their event nodes',
  };

  constructor(private readonly options: ParseInputOptions = {}) {}

  discover(source: DeviceSource): Observable<readonly DeviceInfo[]> {
    return source.trees$.pipe(map((tree) => parseInputDevices(tree, source.backend, this.options)));
  }

  /** `input-linux` for every event node of the device (see input-attach.ts). */
  attachSpec(device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec {
    return inputAttachSpec(device, options);
  }
}
