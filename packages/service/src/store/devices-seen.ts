/** The devices_seen table: every device identity devgated has seen, where last, and since when. */
import { type DeviceInfo, type DomainName, describeDevice } from '@devgate/core';
import { type StoreConnection } from './connection.js';
import * as check from './validate.js';

export interface SeenDevice {
  readonly devclass: string;
  readonly deviceId: string;
  readonly backend: DomainName;
  readonly portId: string;
  readonly firstSeen: string;
  readonly lastSeen: string;
  readonly description?: string;
}

export class DevicesSeen {
  constructor(private readonly connection: StoreConnection) {}

  /** Records a sighting; `isNew` is true the first time this identity is seen, on any port. */
  note(device: DeviceInfo, description: string = describeDevice(device)): { isNew: boolean; firstSeen: string } {
    const params = {
      devclass: check.devclass(device.port.devclass),
      deviceId: check.deviceId(device.deviceId, false),
      backend: check.domainName(device.port.backend),
      portId: check.portId(device.port.portId, false),
      description: check.text('description', description),
      now: this.connection.now().toISOString(),
    };
    return this.connection.transaction(() => {
      const inserted = this.connection
        .stmt(
          `INSERT INTO devices_seen (devclass, device_id, backend, port_id, first_seen, last_seen, description)
           VALUES (@devclass, @deviceId, @backend, @portId, @now, @now, @description) ON CONFLICT DO NOTHING`,
        )
        .run(params);
      if (inserted.changes === 1) return { isNew: true, firstSeen: params.now };
      this.connection
        .stmt(
          `UPDATE devices_seen SET backend = @backend, port_id = @portId, last_seen = @now, description = @description
           WHERE devclass = @devclass AND device_id = @deviceId`,
        )
        .run(params);
      return { isNew: false, firstSeen: this.get(params.devclass, params.deviceId)!.firstSeen };
    });
  }

  get(devclass: string, deviceId: string): SeenDevice | undefined {
    const row = this.connection.guard(
      () =>
        this.connection
          .stmt('SELECT * FROM devices_seen WHERE devclass = ? AND device_id = ?')
          .get(check.devclass(devclass), check.deviceId(deviceId, false)) as SeenRow | undefined,
    );
    return (
      row && {
        devclass: row.devclass,
        deviceId: row.device_id,
        backend: row.backend,
        portId: row.port_id,
        firstSeen: row.first_seen,
        lastSeen: row.last_seen,
        ...(row.description === null ? {} : { description: row.description }),
      }
    );
  }
}

interface SeenRow {
  devclass: string;
  device_id: string;
  backend: string;
  port_id: string;
  first_seen: string;
  last_seen: string;
  description: string | null;
}
