/**
 * devgated's persistent state in one SQLite file: assignments, deny lists, remembered policy answers,
 * devices seen, the audit log and the attachment journal. Synchronous (better-sqlite3): every call is
 * one short local transaction, and a synchronous store keeps "written, then acted" ordering obvious.
 *
 * Values are always bound as parameters. Strings from devices arrive as SafeText; nothing here
 * sanitizes, it only validates shapes (./validate.ts) so bad input fails at the call that made it.
 */
import Database from 'better-sqlite3';
import {
  type AssignmentMode,
  type DenyList,
  type DeviceAssignment,
  type DeviceInfo,
  DevgateError,
  type DomainName,
  Errors,
  type InterfaceCode,
  type StateStore,
  assignmentMatches,
  bySpecificity,
  describeDevice,
} from '@devgate/core';
import { migrate, userVersion } from './migrations.js';
import * as check from './validate.js';

export interface SqliteStateStoreOptions {
  /** The clock for every timestamp the store writes; tests fix it. */
  readonly now?: () => Date;
  /** How long a call waits for another process's lock before DG_STATE_BUSY. */
  readonly busyTimeoutMs?: number;
}

export interface StoreInfo {
  readonly file: string;
  readonly schemaVersion: number;
  readonly journalMode: string;
  readonly synchronous: 'off' | 'normal' | 'full' | 'extra';
  readonly foreignKeys: boolean;
  readonly busyTimeoutMs: number;
}

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

export interface SeenDevice {
  readonly devclass: string;
  readonly deviceId: string;
  readonly backend: DomainName;
  readonly portId: string;
  readonly firstSeen: string;
  readonly lastSeen: string;
  readonly description?: string;
}

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

export interface JournalIntent {
  readonly op: 'attach' | 'detach';
  readonly devclass: string;
  readonly backend: DomainName;
  readonly portId: string;
  /** The identity the port held when the action began: reconciliation checks it is still there. */
  readonly deviceId?: string;
  readonly frontend: DomainName;
  readonly options?: Readonly<Record<string, string>>;
}

export interface JournalEntry extends JournalIntent {
  readonly id: number;
  readonly options: Readonly<Record<string, string>>;
  readonly state: 'pending' | 'done' | 'failed';
  readonly at: string;
  readonly finishedAt?: string;
  readonly code?: string;
}

const MAX_AUDIT_PAGE = 10_000;

export class SqliteStateStore implements StateStore {
  readonly id = 'sqlite';
  private readonly db: Database.Database;
  private readonly statements = new Map<string, Database.Statement>();
  private readonly now: () => Date;

  constructor(
    readonly file: string,
    options: SqliteStateStoreOptions = {},
  ) {
    this.now = options.now ?? (() => new Date());
    try {
      this.db = new Database(file);
    } catch (error) {
      // better-sqlite3 throws a plain TypeError for a missing directory: code every failure here.
      throw Errors.stateUnavailable({ file, reason: (error as Error).message });
    }
    try {
      // First, so that even switching the journal mode waits for another process's lock.
      this.db.pragma(`busy_timeout = ${check.count('busyTimeoutMs', options.busyTimeoutMs ?? 5000, 600_000)}`);
      // WAL: readers (the CLI, the API) never block the writer, and a commit is one append to the
      // log, which SQLite replays or discards atomically after a crash.
      this.db.pragma('journal_mode = WAL');
      // Process death (SIGKILL, OOM) loses nothing once a commit returns even at NORMAL, because the
      // WAL write already sits in the kernel's page cache. FULL also fsyncs the WAL at every commit,
      // so an acknowledged write (the audit record of an attach, a journal intent) survives a power
      // loss or kernel crash as well: devgated reports an action only after its record is durable.
      // The price is one fsync per transaction; batch writes with transaction() where it matters.
      this.db.pragma('synchronous = FULL');
      this.db.pragma('foreign_keys = ON');
      migrate(this.db, file);
    } catch (error) {
      this.db.close();
      throw toStateError(error, file);
    }
  }

  dispose(): void {
    if (this.db.open) this.db.close();
  }

  /** The settings in force on this connection, for status output and tests. */
  info(): StoreInfo {
    return this.guard(() => ({
      file: this.file,
      schemaVersion: userVersion(this.db),
      journalMode: this.db.pragma('journal_mode', { simple: true }) as string,
      synchronous: (['off', 'normal', 'full', 'extra'] as const)[
        this.db.pragma('synchronous', { simple: true }) as number
      ],
      foreignKeys: this.db.pragma('foreign_keys', { simple: true }) === 1,
      busyTimeoutMs: this.db.pragma('busy_timeout', { simple: true }) as number,
    }));
  }

  /** SQLite's own consistency check: `['ok']`, or the problems it found. Reads the whole file. */
  integrityCheck(): string[] {
    return this.guard(() => this.db.pragma('integrity_check', { simple: false }) as { integrity_check: string }[]).map(
      (row) => row.integrity_check,
    );
  }

  /**
   * Runs `fn` in one transaction: all its writes or none, and one fsync instead of one per write.
   * `fn` must be synchronous (a returned promise would commit before it settles); nested calls
   * become savepoints.
   */
  transaction<T>(fn: () => T): T {
    return this.guard(() => this.db.transaction(fn).immediate());
  }

  // -- assignments

  assign(assignment: DeviceAssignment): StoredAssignment {
    const key = this.assignmentKey(assignment);
    const mode = check.assignmentMode(assignment.mode);
    const options = check.options(assignment.options);
    const createdAt = this.now().toISOString();
    return this.guard(() => {
      try {
        this.stmt(
          `INSERT INTO assignments (devclass, backend, port_id, device_id, frontend, mode, options, created_at)
           VALUES (@devclass, @backend, @portId, @deviceId, @frontend, @mode, @options, @createdAt)`,
        ).run({ ...key, mode, options, createdAt });
      } catch (error) {
        if (sqliteCode(error) === 'SQLITE_CONSTRAINT_UNIQUE')
          throw Errors.alreadyAssigned({ devclass: key.devclass, device: deviceLabel(key), frontend: key.frontend });
        throw error;
      }
      return { ...key, mode, options: JSON.parse(options), createdAt };
    });
  }

  /** Removes exactly this assignment; Qubes' DeviceNotAssigned when there is none. Never detaches. */
  unassign(key: AssignmentKey): void {
    const k = this.assignmentKey(key);
    this.guard(() => {
      const { changes } = this.stmt(
        `DELETE FROM assignments WHERE devclass = @devclass AND backend = @backend AND port_id = @portId
           AND device_id = @deviceId AND frontend = @frontend`,
      ).run(k);
      if (changes === 0)
        throw Errors.notAssigned({ devclass: k.devclass, device: deviceLabel(k), frontend: k.frontend });
    });
  }

  listAssignments(filter: AssignmentFilter = {}): StoredAssignment[] {
    const params = {
      devclass: filter.devclass === undefined ? null : check.devclass(filter.devclass),
      backend: filter.backend === undefined ? null : check.domainName(filter.backend),
      frontend: filter.frontend === undefined ? null : check.domainName(filter.frontend),
      mode: filter.mode ?? null,
    };
    return this.guard(() =>
      (
        this.stmt(
          `SELECT * FROM assignments
           WHERE (@devclass IS NULL OR devclass = @devclass) AND (@backend IS NULL OR backend = @backend)
             AND (@frontend IS NULL OR frontend = @frontend) AND (@mode IS NULL OR mode = @mode)
           ORDER BY devclass, backend, port_id, device_id, frontend`,
        ).all(params) as AssignmentRow[]
      ).map(assignmentFromRow),
    );
  }

  /** The assignments that match a device, most specific first (Qubes' order), for every frontend or one. */
  matchingAssignments(device: DeviceInfo, frontend?: DomainName): StoredAssignment[] {
    const params = {
      devclass: check.devclass(device.port.devclass),
      backend: check.domainName(device.port.backend),
      portId: check.portId(device.port.portId, false),
      deviceId: check.deviceId(device.deviceId, false),
      frontend: frontend === undefined ? null : check.domainName(frontend),
    };
    const rows = this.guard(
      () =>
        this.stmt(
          `SELECT * FROM assignments
           WHERE devclass = @devclass AND backend = @backend AND port_id IN ('*', @portId)
             AND device_id IN ('*', @deviceId) AND (@frontend IS NULL OR frontend = @frontend)
           ORDER BY frontend, id`,
        ).all(params) as AssignmentRow[],
    );
    // The SQL narrows; core's rules decide, so the daemon and the kernel can never disagree.
    return rows
      .map(assignmentFromRow)
      .filter((a) => assignmentMatches(a, device))
      .sort(bySpecificity);
  }

  // -- deny list (Qubes' devices_denied, one row per pattern)

  denyList(frontend: DomainName): DenyList {
    const name = check.domainName(frontend);
    return this.guard(() => ({
      frontend: name,
      patterns: this.stmt('SELECT pattern FROM deny_list WHERE frontend = ? ORDER BY pattern')
        .pluck()
        .all(name) as string[],
    }));
  }

  denyLists(): DenyList[] {
    const rows = this.guard(
      () => this.stmt('SELECT frontend, pattern FROM deny_list ORDER BY frontend, pattern').all() as DenyRow[],
    );
    const lists = new Map<string, InterfaceCode[]>();
    for (const row of rows) lists.set(row.frontend, [...(lists.get(row.frontend) ?? []), row.pattern]);
    return [...lists].map(([frontend, patterns]) => ({ frontend, patterns }));
  }

  addDenied(frontend: DomainName, patterns: readonly string[]): DenyList {
    const name = check.domainName(frontend);
    const codes = patterns.map(check.interfacePattern);
    this.transaction(() => {
      const insert = this.stmt('INSERT INTO deny_list (frontend, pattern) VALUES (?, ?) ON CONFLICT DO NOTHING');
      for (const code of codes) insert.run(name, code);
    });
    return this.denyList(name);
  }

  removeDenied(frontend: DomainName, patterns: readonly string[]): DenyList {
    const name = check.domainName(frontend);
    const codes = patterns.map(check.interfacePattern);
    this.transaction(() => {
      const remove = this.stmt('DELETE FROM deny_list WHERE frontend = ? AND pattern = ?');
      for (const code of codes) remove.run(name, code);
    });
    return this.denyList(name);
  }

  /** Replaces the whole list, as setting Qubes' `devices_denied` property does; `[]` clears it. */
  setDenyList(frontend: DomainName, patterns: readonly string[]): DenyList {
    const name = check.domainName(frontend);
    const codes = patterns.map(check.interfacePattern);
    this.transaction(() => {
      this.stmt('DELETE FROM deny_list WHERE frontend = ?').run(name);
      const insert = this.stmt('INSERT INTO deny_list (frontend, pattern) VALUES (?, ?) ON CONFLICT DO NOTHING');
      for (const code of codes) insert.run(name, code);
    });
    return this.denyList(name);
  }

  // -- remembered answers to asks

  /** Remembers (or replaces) the user's answer for this scope: a port, a device, or both. */
  rememberAnswer(input: PolicyAnswerInput): PolicyAnswer {
    const key = this.assignmentKey(input);
    if (input.verdict !== 'allow' && input.verdict !== 'deny')
      throw Errors.invalidStateValue({
        field: 'verdict',
        value: String(input.verdict),
        reason: 'expected allow or deny',
      });
    const createdAt = this.now().toISOString();
    const expiresAt = input.expiresAt === undefined ? undefined : check.isoTime('expiresAt', input.expiresAt);
    this.guard(() =>
      this.stmt(
        `INSERT INTO policy_answers (devclass, backend, port_id, device_id, frontend, verdict, created_at, expires_at)
         VALUES (@devclass, @backend, @portId, @deviceId, @frontend, @verdict, @createdAt, @expiresAt)
         ON CONFLICT DO UPDATE SET verdict = excluded.verdict, created_at = excluded.created_at,
           expires_at = excluded.expires_at`,
      ).run({ ...key, verdict: input.verdict, createdAt, expiresAt: expiresAt ?? null }),
    );
    return { ...key, verdict: input.verdict, createdAt, ...(expiresAt === undefined ? {} : { expiresAt }) };
  }

  /** The most specific unexpired answer for this device and frontend, if the user gave one. */
  lookupAnswer(device: DeviceInfo, frontend: DomainName): PolicyAnswer | undefined {
    const params = {
      devclass: check.devclass(device.port.devclass),
      backend: check.domainName(device.port.backend),
      portId: check.portId(device.port.portId, false),
      deviceId: check.deviceId(device.deviceId, false),
      frontend: check.domainName(frontend),
      now: this.now().toISOString(),
    };
    // Ranked as core's specificity(): port and device, then port only, then device only.
    const row = this.guard(
      () =>
        this.stmt(
          `SELECT * FROM policy_answers
           WHERE devclass = @devclass AND backend = @backend AND frontend = @frontend
             AND port_id IN ('*', @portId) AND device_id IN ('*', @deviceId)
             AND (expires_at IS NULL OR expires_at > @now)
           ORDER BY (port_id <> '*') * 2 + (device_id <> '*') DESC LIMIT 1`,
        ).get(params) as AnswerRow | undefined,
    );
    return row && answerFromRow(row);
  }

  /**
   * The remembered answers, ordered by frontend, class and scope. Expired ones (which lookupAnswer
   * no longer uses) only with `includeExpired`.
   */
  listAnswers(
    filter: { readonly frontend?: DomainName; readonly devclass?: string; readonly includeExpired?: boolean } = {},
  ): PolicyAnswer[] {
    const params = {
      frontend: filter.frontend === undefined ? null : check.domainName(filter.frontend),
      devclass: filter.devclass === undefined ? null : check.devclass(filter.devclass),
      now: filter.includeExpired ? null : this.now().toISOString(),
    };
    return this.guard(() =>
      (
        this.stmt(
          `SELECT * FROM policy_answers
           WHERE (@frontend IS NULL OR frontend = @frontend) AND (@devclass IS NULL OR devclass = @devclass)
             AND (@now IS NULL OR expires_at IS NULL OR expires_at > @now)
           ORDER BY frontend, devclass, backend, port_id, device_id`,
        ).all(params) as AnswerRow[]
      ).map(answerFromRow),
    );
  }

  /** Forgets exactly this remembered answer; false when there was none. */
  forgetAnswer(key: AssignmentKey): boolean {
    const k = this.assignmentKey(key);
    return this.guard(
      () =>
        this.stmt(
          `DELETE FROM policy_answers WHERE devclass = @devclass AND backend = @backend AND port_id = @portId
             AND device_id = @deviceId AND frontend = @frontend`,
        ).run(k).changes === 1,
    );
  }

  /** Forgets remembered answers (all, or one frontend's / one class's); returns how many. */
  forgetAnswers(filter: { readonly frontend?: DomainName; readonly devclass?: string } = {}): number {
    const params = {
      frontend: filter.frontend === undefined ? null : check.domainName(filter.frontend),
      devclass: filter.devclass === undefined ? null : check.devclass(filter.devclass),
    };
    return this.guard(
      () =>
        this.stmt(
          `DELETE FROM policy_answers
           WHERE (@frontend IS NULL OR frontend = @frontend) AND (@devclass IS NULL OR devclass = @devclass)`,
        ).run(params).changes,
    );
  }

  // -- devices seen

  /** Records a sighting; `isNew` is true the first time this identity is seen, on any port. */
  noteSeen(device: DeviceInfo, description: string = describeDevice(device)): { isNew: boolean; firstSeen: string } {
    const params = {
      devclass: check.devclass(device.port.devclass),
      deviceId: check.deviceId(device.deviceId, false),
      backend: check.domainName(device.port.backend),
      portId: check.portId(device.port.portId, false),
      description: check.text('description', description),
      now: this.now().toISOString(),
    };
    return this.transaction(() => {
      const inserted = this.stmt(
        `INSERT INTO devices_seen (devclass, device_id, backend, port_id, first_seen, last_seen, description)
         VALUES (@devclass, @deviceId, @backend, @portId, @now, @now, @description) ON CONFLICT DO NOTHING`,
      ).run(params);
      if (inserted.changes === 1) return { isNew: true, firstSeen: params.now };
      this.stmt(
        `UPDATE devices_seen SET backend = @backend, port_id = @portId, last_seen = @now, description = @description
         WHERE devclass = @devclass AND device_id = @deviceId`,
      ).run(params);
      return { isNew: false, firstSeen: this.seenDevice(params.devclass, params.deviceId)!.firstSeen };
    });
  }

  seenDevice(devclass: string, deviceId: string): SeenDevice | undefined {
    const row = this.guard(
      () =>
        this.stmt('SELECT * FROM devices_seen WHERE devclass = ? AND device_id = ?').get(
          check.devclass(devclass),
          check.deviceId(deviceId, false),
        ) as SeenRow | undefined,
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

  // -- audit log (append-only: the schema's triggers refuse UPDATE and DELETE)

  appendAudit(entry: AuditEntryInput): AuditEntry {
    if (!['ok', 'denied', 'error'].includes(entry.outcome))
      throw Errors.invalidStateValue({
        field: 'outcome',
        value: String(entry.outcome),
        reason: 'expected ok, denied or error',
      });
    const row = {
      at: check.isoTime('at', entry.at ?? this.now()),
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
    const { lastInsertRowid } = this.guard(() =>
      this.stmt(
        `INSERT INTO audit_log (at, actor, action, devclass, backend, port_id, device_id, frontend, outcome, code,
           reason, details)
         VALUES (@at, @actor, @action, @devclass, @backend, @port_id, @device_id, @frontend, @outcome, @code,
           @reason, @details)`,
      ).run(row),
    );
    return auditFromRow({ id: Number(lastInsertRowid), ...row });
  }

  queryAudit(query: AuditQuery = {}): AuditEntry[] {
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
    const sql =
      'SELECT * FROM audit_log' +
      (where.length > 0 ? ` WHERE ${where.join(' AND ')}` : '') +
      ` ORDER BY at ${order}, id ${order} LIMIT @limit OFFSET @offset`;
    return this.guard(() => (this.stmt(sql).all(params) as AuditRow[]).map(auditFromRow));
  }

  // -- attachment journal: intent before a hypervisor action, settled after it

  journalBegin(intent: JournalIntent): JournalEntry {
    if (intent.op !== 'attach' && intent.op !== 'detach')
      throw Errors.invalidStateValue({
        field: 'journal op',
        value: String(intent.op),
        reason: 'expected attach or detach',
      });
    const row = {
      op: intent.op,
      devclass: check.devclass(intent.devclass),
      backend: check.domainName(intent.backend),
      port_id: check.portId(intent.portId, false),
      device_id: intent.deviceId === undefined ? null : check.deviceId(intent.deviceId, false),
      frontend: check.domainName(intent.frontend),
      options: check.options(intent.options),
      state: 'pending' as const,
      at: this.now().toISOString(),
      finished_at: null,
      code: null,
    };
    const { lastInsertRowid } = this.guard(() =>
      this.stmt(
        `INSERT INTO attachment_journal (op, devclass, backend, port_id, device_id, frontend, options, state, at)
         VALUES (@op, @devclass, @backend, @port_id, @device_id, @frontend, @options, @state, @at)`,
      ).run(row),
    );
    return journalFromRow({ id: Number(lastInsertRowid), ...row });
  }

  journalComplete(id: number): void {
    this.settle(id, 'done', null);
  }

  journalFail(id: number, code?: string): void {
    this.settle(id, 'failed', code === undefined ? null : check.errorCode(code));
  }

  /** Actions whose outcome is unknown (devgated died in between), oldest first: reconcile these at start. */
  journalPending(): JournalEntry[] {
    return this.guard(() =>
      (this.stmt("SELECT * FROM attachment_journal WHERE state = 'pending' ORDER BY id").all() as JournalRow[]).map(
        journalFromRow,
      ),
    );
  }

  journalEntry(id: number): JournalEntry | undefined {
    const row = this.guard(
      () => this.stmt('SELECT * FROM attachment_journal WHERE id = ?').get(id) as JournalRow | undefined,
    );
    return row && journalFromRow(row);
  }

  /** Deletes settled entries finished before `before` (the audit log keeps the history); returns how many. */
  journalPrune(before: Date | string): number {
    const cutoff = check.isoTime('before', before);
    return this.guard(
      () =>
        this.stmt("DELETE FROM attachment_journal WHERE state <> 'pending' AND finished_at < ?").run(cutoff).changes,
    );
  }

  // -- internals

  private settle(id: number, state: 'done' | 'failed', code: string | null): void {
    this.guard(() => {
      const { changes } = this.stmt(
        `UPDATE attachment_journal SET state = @state, finished_at = @at, code = @code
         WHERE id = @id AND state = 'pending'`,
      ).run({ id, state, code, at: this.now().toISOString() });
      if (changes === 0) throw Errors.journalEntryNotPending({ id, state: this.journalEntry(id)?.state ?? 'missing' });
    });
  }

  private assignmentKey(key: AssignmentKey): Required<AssignmentKey> {
    const portId = check.portId(key.portId, true);
    const deviceId = check.deviceId(key.deviceId, true);
    check.notBothWildcards(portId, deviceId);
    return {
      devclass: check.devclass(key.devclass),
      backend: check.domainName(key.backend),
      portId,
      deviceId,
      frontend: check.domainName(key.frontend),
    };
  }

  /** Prepared once per SQL text, which is always a literal (or fixed fragments) from this file. */
  private stmt(sql: string): Database.Statement {
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      this.statements.set(sql, statement);
    }
    return statement;
  }

  private guard<T>(fn: () => T): T {
    if (!this.db.open) throw Errors.stateClosed();
    try {
      return fn();
    } catch (error) {
      throw toStateError(error, this.file);
    }
  }
}

/** Maps SQLite's errors onto the catalogue; anything else (a bug) passes through as DG_INTERNAL. */
export function toStateError(error: unknown, file: string): unknown {
  if (error instanceof DevgateError) return error;
  const code = sqliteCode(error);
  if (code === undefined) return error;
  const reason = (error as Error).message;
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) return Errors.stateBusy({ file });
  if (code.startsWith('SQLITE_CONSTRAINT'))
    return Errors.stateConstraint({ constraint: code.slice('SQLITE_'.length).toLowerCase(), reason });
  if (/^SQLITE_(NOTADB|CORRUPT|CANTOPEN|IOERR|FULL|READONLY|PERM|AUTH)/.test(code))
    return Errors.stateUnavailable({ file, reason: `${reason} (${code})` });
  return error;
}

/**
 * By shape, not `instanceof`: the native addon keeps the SqliteError class of the first copy of
 * better-sqlite3 that loaded it, so errors thrown under a second copy (jest's per-file module
 * registries and contexts, or two installed versions) are instances of another class, even of
 * another realm's Error.
 */
function sqliteCode(error: unknown): string | undefined {
  const { name, code } = (typeof error === 'object' && error !== null ? error : {}) as {
    name?: unknown;
    code?: unknown;
  };
  return name === 'SqliteError' && typeof code === 'string' && code.startsWith('SQLITE_') ? code : undefined;
}

function deviceLabel(key: AssignmentKey): string {
  return `${key.backend}:${key.portId}:${key.deviceId}`;
}

// -- rows as SQLite returns them, and their mapping to the API's shapes

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

interface DenyRow {
  frontend: string;
  pattern: string;
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

interface SeenRow {
  devclass: string;
  device_id: string;
  backend: string;
  port_id: string;
  first_seen: string;
  last_seen: string;
  description: string | null;
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

interface JournalRow {
  id: number;
  op: 'attach' | 'detach';
  devclass: string;
  backend: string;
  port_id: string;
  device_id: string | null;
  frontend: string;
  options: string;
  state: 'pending' | 'done' | 'failed';
  at: string;
  finished_at: string | null;
  code: string | null;
}

/** `{ key: value }` for the non-null values only, so optional fields are absent rather than null. */
function present<T extends Record<string, unknown>>(fields: T): { [K in keyof T]?: NonNullable<T[K]> } {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== null)) as never;
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

function journalFromRow(row: JournalRow): JournalEntry {
  return {
    id: row.id,
    op: row.op,
    devclass: row.devclass,
    backend: row.backend,
    portId: row.port_id,
    frontend: row.frontend,
    options: JSON.parse(row.options),
    state: row.state,
    at: row.at,
    ...present({ deviceId: row.device_id, finishedAt: row.finished_at, code: row.code }),
  };
}
