/** The assignments table: which device goes to which frontend, and how (auto-attach, ask, required). */
import {
  type AssignmentMode,
  type DeviceAssignment,
  type DeviceInfo,
  type DomainName,
  Errors,
  assignmentsFor,
} from '@devgate/core';
import { type StoreConnection, sqliteCode } from './connection.js';
import * as check from './validate.js';

export interface StoredAssignment extends DeviceAssignment {
  readonly mode: Exclude<AssignmentMode, 'manual'>;
  readonly createdAt: string;
}

export type AssignmentKey = Pick<DeviceAssignment, 'devclass' | 'backend' | 'portId' | 'deviceId' | 'frontend'>;

export interface AssignmentFilter {
  readonly devclass?: string;
  readonly backend?: DomainName;
  readonly frontend?: DomainName;
  readonly mode?: AssignmentMode;
}

export class Assignments {
  constructor(private readonly connection: StoreConnection) {}

  add(assignment: DeviceAssignment): StoredAssignment {
    const key = check.scopeKey(assignment);
    const mode = check.assignmentMode(assignment.mode);
    const options = check.options(assignment.options);
    const createdAt = this.connection.now().toISOString();
    return this.connection.guard(() => {
      try {
        this.connection
          .stmt(
            `INSERT INTO assignments (devclass, backend, port_id, device_id, frontend, mode, options, created_at)
             VALUES (@devclass, @backend, @portId, @deviceId, @frontend, @mode, @options, @createdAt)`,
          )
          .run({ ...key, mode, options, createdAt });
      } catch (error) {
        if (sqliteCode(error) === 'SQLITE_CONSTRAINT_UNIQUE')
          throw Errors.alreadyAssigned({ devclass: key.devclass, device: deviceLabel(key), frontend: key.frontend });
        throw error;
      }
      return { ...key, mode, options: JSON.parse(options), createdAt };
    });
  }

  /** Removes exactly this assignment; Qubes' DeviceNotAssigned when there is none. Never detaches. */
  remove(key: AssignmentKey): void {
    const k = check.scopeKey(key);
    this.connection.guard(() => {
      const { changes } = this.connection
        .stmt(
          `DELETE FROM assignments WHERE devclass = @devclass AND backend = @backend AND port_id = @portId
             AND device_id = @deviceId AND frontend = @frontend`,
        )
        .run(k);
      if (changes === 0)
        throw Errors.notAssigned({ devclass: k.devclass, device: deviceLabel(k), frontend: k.frontend });
    });
  }

  list(filter: AssignmentFilter = {}): StoredAssignment[] {
    const params = {
      devclass: filter.devclass === undefined ? null : check.devclass(filter.devclass),
      backend: filter.backend === undefined ? null : check.domainName(filter.backend),
      frontend: filter.frontend === undefined ? null : check.domainName(filter.frontend),
      mode: filter.mode ?? null,
    };
    return this.connection.guard(() =>
      (
        this.connection
          .stmt(
            `SELECT * FROM assignments
             WHERE (@devclass IS NULL OR devclass = @devclass) AND (@backend IS NULL OR backend = @backend)
               AND (@frontend IS NULL OR frontend = @frontend) AND (@mode IS NULL OR mode = @mode)
             ORDER BY devclass, backend, port_id, device_id, frontend`,
          )
          .all(params) as AssignmentRow[]
      ).map(assignmentFromRow),
    );
  }

  /** The assignments that match a device, most specific first (Qubes' order), for every frontend or one. */
  matching(device: DeviceInfo, frontend?: DomainName): StoredAssignment[] {
    const params = {
      devclass: check.devclass(device.port.devclass),
      backend: check.domainName(device.port.backend),
      portId: check.portId(device.port.portId, false),
      deviceId: check.deviceId(device.deviceId, false),
      frontend: frontend === undefined ? null : check.domainName(frontend),
    };
    const rows = this.connection.guard(
      () =>
        this.connection
          .stmt(
            `SELECT * FROM assignments
             WHERE devclass = @devclass AND backend = @backend AND port_id IN ('*', @portId)
               AND device_id IN ('*', @deviceId) AND (@frontend IS NULL OR frontend = @frontend)
             ORDER BY frontend, id`,
          )
          .all(params) as AssignmentRow[],
    );
    // The SQL narrows; core's rules decide, so the daemon and the kernel can never disagree.
    return assignmentsFor(rows.map(assignmentFromRow), device);
  }
}

function deviceLabel(key: AssignmentKey): string {
  return `${key.backend}:${key.portId}:${key.deviceId}`;
}

interface AssignmentRow {
  devclass: string;
  backend: string;
  port_id: string;
  device_id: string;
  frontend: string;
  mode: Exclude<AssignmentMode, 'manual'>;
  options: string;
  created_at: string;
}

function assignmentFromRow(row: AssignmentRow): StoredAssignment {
  return {
    devclass: row.devclass,
    backend: row.backend,
    portId: row.port_id,
    deviceId: row.device_id,
    frontend: row.frontend,
    mode: row.mode,
    options: JSON.parse(row.options),
    createdAt: row.created_at,
  };
}
