/** The policy_answers table: answers to asks the user chose to remember, for a port, a device, or both. */
import { type DeviceInfo, type DomainName, Errors } from '@devgate/core';
import { type AssignmentKey } from './assignments.js';
import { type StoreConnection, present } from './connection.js';
import * as check from './validate.js';

export interface PolicyAnswer {
  readonly devclass: string;
  readonly backend: DomainName;
  /** `*` for any port. */
  readonly portId: string;
  /** `*` for any device. */
  readonly deviceId: string;
  readonly frontend: DomainName;
  readonly verdict: 'allow' | 'deny';
  readonly createdAt: string;
  /** Absent: remembered until forgotten. */
  readonly expiresAt?: string;
}

export type PolicyAnswerInput = Omit<PolicyAnswer, 'createdAt' | 'expiresAt'> & { readonly expiresAt?: Date | string };

export class PolicyAnswers {
  constructor(private readonly connection: StoreConnection) {}

  /** Remembers (or replaces) the user's answer for this scope: a port, a device, or both. */
  remember(input: PolicyAnswerInput): PolicyAnswer {
    const key = check.scopeKey(input);
    if (input.verdict !== 'allow' && input.verdict !== 'deny')
      throw Errors.invalidStateValue({
        field: 'verdict',
        value: String(input.verdict),
        reason: 'expected allow or deny',
      });
    const createdAt = this.connection.now().toISOString();
    const expiresAt = input.expiresAt === undefined ? undefined : check.isoTime('expiresAt', input.expiresAt);
    this.connection.guard(() =>
      this.connection
        .stmt(
          `INSERT INTO policy_answers (devclass, backend, port_id, device_id, frontend, verdict, created_at, expires_at)
           VALUES (@devclass, @backend, @portId, @deviceId, @frontend, @verdict, @createdAt, @expiresAt)
           ON CONFLICT DO UPDATE SET verdict = excluded.verdict, created_at = excluded.created_at,
             expires_at = excluded.expires_at`,
        )
        .run({ ...key, verdict: input.verdict, createdAt, expiresAt: expiresAt ?? null }),
    );
    return { ...key, verdict: input.verdict, createdAt, ...(expiresAt === undefined ? {} : { expiresAt }) };
  }

  /** The most specific unexpired answer for this device and frontend, if the user gave one. */
  lookup(device: DeviceInfo, frontend: DomainName): PolicyAnswer | undefined {
    const params = {
      devclass: check.devclass(device.port.devclass),
      backend: check.domainName(device.port.backend),
      portId: check.portId(device.port.portId, false),
      deviceId: check.deviceId(device.deviceId, false),
      frontend: check.domainName(frontend),
      now: this.connection.now().toISOString(),
    };
    // Ranked as core's specificity(): port and device, then port only, then device only.
    const row = this.connection.guard(
      () =>
        this.connection
          .stmt(
            `SELECT * FROM policy_answers
             WHERE devclass = @devclass AND backend = @backend AND frontend = @frontend
               AND port_id IN ('*', @portId) AND device_id IN ('*', @deviceId)
               AND (expires_at IS NULL OR expires_at > @now)
             ORDER BY (port_id <> '*') * 2 + (device_id <> '*') DESC LIMIT 1`,
          )
          .get(params) as AnswerRow | undefined,
    );
    return row && answerFromRow(row);
  }

  /**
   * The remembered answers, ordered by frontend, class and scope. Expired ones (which lookup() no
   * longer uses) only with `includeExpired`.
   */
  list(
    filter: { readonly frontend?: DomainName; readonly devclass?: string; readonly includeExpired?: boolean } = {},
  ): PolicyAnswer[] {
    const params = {
      frontend: filter.frontend === undefined ? null : check.domainName(filter.frontend),
      devclass: filter.devclass === undefined ? null : check.devclass(filter.devclass),
      now: filter.includeExpired ? null : this.connection.now().toISOString(),
    };
    return this.connection.guard(() =>
      (
        this.connection
          .stmt(
            `SELECT * FROM policy_answers
             WHERE (@frontend IS NULL OR frontend = @frontend) AND (@devclass IS NULL OR devclass = @devclass)
               AND (@now IS NULL OR expires_at IS NULL OR expires_at > @now)
             ORDER BY frontend, devclass, backend, port_id, device_id`,
          )
          .all(params) as AnswerRow[]
      ).map(answerFromRow),
    );
  }

  /** Forgets exactly this remembered answer; false when there was none. */
  forget(key: AssignmentKey): boolean {
    const k = check.scopeKey(key);
    return this.connection.guard(
      () =>
        this.connection
          .stmt(
            `DELETE FROM policy_answers WHERE devclass = @devclass AND backend = @backend AND port_id = @portId
               AND device_id = @deviceId AND frontend = @frontend`,
          )
          .run(k).changes === 1,
    );
  }

  /** Forgets remembered answers (all, or one frontend's / one class's); returns how many. */
  forgetAll(filter: { readonly frontend?: DomainName; readonly devclass?: string } = {}): number {
    const params = {
      frontend: filter.frontend === undefined ? null : check.domainName(filter.frontend),
      devclass: filter.devclass === undefined ? null : check.devclass(filter.devclass),
    };
    return this.connection.guard(
      () =>
        this.connection
          .stmt(
            `DELETE FROM policy_answers
             WHERE (@frontend IS NULL OR frontend = @frontend) AND (@devclass IS NULL OR devclass = @devclass)`,
          )
          .run(params).changes,
    );
  }
}

interface AnswerRow {
  devclass: string;
  backend: string;
  port_id: string;
  device_id: string;
  frontend: string;
  verdict: 'allow' | 'deny';
  created_at: string;
  expires_at: string | null;
}

function answerFromRow(row: AnswerRow): PolicyAnswer {
  return {
    devclass: row.devclass,
    backend: row.backend,
    portId: row.port_id,
    deviceId: row.device_id,
    frontend: row.frontend,
    verdict: row.verdict,
    createdAt: row.created_at,
    ...present({ expiresAt: row.expires_at }),
  };
}
