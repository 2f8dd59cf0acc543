import { Errors } from '@devgate/core';
import { type DeviceAccess } from './device-access.js';

/**
 * Qubes' `required`: a domain whose required device is absent does not start. Checked before a lab
 * VM starts; the device must be present in its backend now (any port for a `*` port, any device
 * for a `*` device id).
 */
export async function assertRequiredDevices(access: DeviceAccess, domains: readonly string[]): Promise<void> {
  const required = (await access.assignments()).filter((a) => a.mode === 'required' && domains.includes(a.frontend));
  if (required.length === 0) return;
  const present = await access.list({ all: true });
  for (const a of required) {
    const found = present.some(
      (d) =>
        d.class === a.devclass &&
        d.backend === a.backend &&
        (a.portId === '*' || d.portId === a.portId) &&
        (a.deviceId === '*' || d.deviceId === a.deviceId),
    );
    if (!found) throw Errors.requiredDeviceAbsent({ domain: a.frontend, device: `${a.backend}:${a.portId}` });
  }
}
