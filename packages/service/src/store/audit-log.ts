/**
 * The audit_log table: append-only (the schema's triggers refuse UPDATE, and DELETE but of its oldest
 * entries, which retention prunes), paged in the order written.
 */
import { type DomainName, Errors } from '@devgate/core';
import { type StoreConnection, present } from './connection.js';
import * as check from './validate.js';

/** The actions devgated writes; the list is open so that modules can audit their own. */
export const AUDIT_ACTIONS = [
  'attach',
  'detach',
  'assign',
  'unassign',
  'deny-list',
  'policy',
  'ask',
  'answer',
  'auto-attach',
  'surprise-removal',
  'attachment-ended',
  'reconcile',
  'input-policy',
  'input-forward',
  'registry',
  'audit-prune',
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number] | (string & {});
export type AuditOutcome = 'ok' | 'denied' | 'error';

export interface AuditEntryInput {
  /** Default: now. */
  readonly at?: Date | string;
  /** `uid:1000(alice)`, or `devgated` for what the daemon decides itself. */
  readonly actor: string;
  readonly action: AuditAction;
  readonly devclass?: string;
  readonly backend?: DomainName;
  readonly portId?: string;
  readonly deviceId?: string;
  readonly frontend?: DomainName;
  readonly outcome: AuditOutcome;
  /** The DevgateError code when the outcome is not ok. */
  readonly code?: string;
  readonly reason?: string;
  readonly details?: Readonly<Record<string, unknown>>;
}

export interface AuditEntry extends Omit<AuditEntryInput, 'at'> {
  readonly id: number;
  readonly at: string;
}

export interface AuditQuery {
  /** Inclusive. */
  readonly since?: Date | string;
  /** Exclusive. */
  readonly until?: Date | string;
  readonly action?: AuditAction;
  readonly frontend?: DomainName;
  readonly devclass?: string;
  /** Default 100, at most 10,000. */
  readonly limit?: number;
  readonly offset?: number;
  /** Default `asc` (oldest first). */
  readonly order?: 'asc' | 'desc';
}

const MAX_AUDIT_PAGE = 10_000;

export class AuditLog {
  constructor(private readonly connection: StoreConnection) {}

  append(entry: AuditEntryInput): AuditEntry {
    if (!['ok', 'denied', 'error'].includes(entry.outcome))
      throw Errors.invalidStateValue({
        field: 'outcome',
        value: String(entry.outcome),
        reason: 'expected ok, denied or error',
      });
    const row = {
      at: check.isoTime('at', entry.at ?? this.connection.now()),
      actor: check.text('actor', entry.actor, 128),
      action: check.action(entry.action),
      devclass: entry.devclass === undefined ? null : check.devclass(entry.devclass),
      backend: entry.backend === undefined ? null : check.domainName(entry.backend),
      port_id: entry.portId === undefined ? null : check.portId(entry.portId, true),
      device_id: entry.deviceId === undefined ? null : check.deviceId(entry.deviceId, true),
      frontend: entry.frontend === undefined ? null : check.domainName(entry.frontend),
      outcome: entry.outcome,
      code: entry.code === undefined ? null : check.errorCode(entry.code),
      reason: entry.reason === undefined ? null : check.text('reason', entry.reason),
      details: entry.details === undefined ? null : check.details(entry.details),
    };
    const { lastInsertRowid } = this.connection.guard(() =>
      this.connection
        .stmt(
          `INSERT INTO audit_log (at, actor, action, devclass, backend, port_id, device_id, frontend, outcome, code,
             reason, details)
           VALUES (@at, @actor, @action, @devclass, @backend, @port_id, @device_id, @frontend, @outcome, @code,
             @reason, @details)`,
        )
        .run(row),
    );
    return auditFromRow({ id: Number(lastInsertRowid), ...row });
  }

  /**
   * Retention: removes the entries stamped before `before`, in one transaction with the entry
   * `record(count)` makes (appended first: the newest entry always stays), or does nothing when none
   * is that old. Only a run of the oldest: it stops at the first entry it keeps, so one stamped early
   * but written after it (a clock set back) waits, and the log never gets a hole.
   */
  prune(before: Date | string, record: (pruned: number) => AuditEntryInput): AuditEntry | undefined {
    const cutoff = check.isoTime('before', before);
    return this.connection.transaction(() => {
      const { keep } = this.connection
        .stmt(
          `SELECT coalesce((SELECT min(id) FROM audit_log WHERE at >= @cutoff), (SELECT max(id) FROM audit_log) + 1, 0)
             AS keep`,
        )
        .get({ cutoff }) as { keep: number };
      const { pruned } = this.connection
        .stmt('SELECT count(*) AS pruned FROM audit_log WHERE id < @keep')
        .get({ keep }) as { pruned: number };
      if (pruned === 0) return undefined;
      const entry = this.append(record(pruned));
      this.connection.stmt('DELETE FROM audit_log WHERE id < @keep').run({ keep });
      return entry;
    });
  }

  query(query: AuditQuery = {}): AuditEntry[] {
    // Only fixed fragments are joined here, never a value; the statement cache is keyed by the text,
    // so there are at most 2^5 * 2 distinct statements. Separate fragments (rather than
    // `@x IS NULL OR ...`) let SQLite use the `at` and `frontend, at` indexes on a large log.
    const where: string[] = [];
    const params: Record<string, string | number> = {
      limit: check.count('limit', query.limit ?? 100, MAX_AUDIT_PAGE),
      offset: check.count('offset', query.offset ?? 0, Number.MAX_SAFE_INTEGER),
    };
    if (query.since !== undefined) {
      where.push('at >= @since');
      params.since = check.isoTime('since', query.since);
    }
    if (query.until !== undefined) {
      where.push('at < @until');
      params.until = check.isoTime('until', query.until);
    }
    if (query.action !== undefined) {
      where.push('action = @action');
      params.action = check.action(query.action);
    }
    if (query.frontend !== undefined) {
      where.push('frontend = @frontend');
      params.frontend = check.domainName(query.frontend);
    }
    if (query.devclass !== undefined) {
      where.push('devclass = @devclass');
      params.devclass = check.devclass(query.devclass);
    }
    const order = query.order === 'desc' ? 'DESC' : 'ASC';
    // In the order written (ids only grow), not by `at`: a clock set back would sort what happened
    // since before what was stamped earlier, and `desc` paging would hide the newest entries.
    const sql =
      'SELECT * FROM audit_log' +
      (where.length > 0 ? ` WHERE ${where.join(' AND ')}` : '') +
      ` ORDER BY id ${order} LIMIT @limit OFFSET @offset`;
    return this.connection.guard(() => (this.connection.stmt(sql).all(params) as AuditRow[]).map(auditFromRow));
  }
}

interface AuditRow {
  id: number;
  at: string;
  actor: string;
  action: string;
  devclass: string | null;
  backend: string | null;
  port_id: string | null;
  device_id: string | null;
  frontend: string | null;
  outcome: AuditOutcome;
  code: string | null;
  reason: string | null;
  details: string | null;
}

function auditFromRow(row: AuditRow): AuditEntry {
  return {
    id: row.id,
    at: row.at,
    actor: row.actor,
    action: row.action,
    outcome: row.outcome,
    ...present({
      devclass: row.devclass,
      backend: row.backend,
      portId: row.port_id,
      deviceId: row.device_id,
      frontend: row.frontend,
      code: row.code,
      reason: row.reason,
    }),
    ...(row.details === null ? {} : { details: JSON.parse(row.details) }),
  };
}
