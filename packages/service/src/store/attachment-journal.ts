/**
 * The attachment_journal table: the intent written before a hypervisor action, settled after it, so
 * that devgated reconciles at start what a crash left pending.
 */
import { type DomainName, Errors } from '@devgate/core';
import { type StoreConnection, present } from './connection.js';
import * as check from './validate.js';

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

export class AttachmentJournal {
  constructor(private readonly connection: StoreConnection) {}

  begin(intent: JournalIntent): JournalEntry {
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
      at: this.connection.now().toISOString(),
      finished_at: null,
      code: null,
    };
    const { lastInsertRowid } = this.connection.guard(() =>
      this.connection
        .stmt(
          `INSERT INTO attachment_journal (op, devclass, backend, port_id, device_id, frontend, options, state, at)
           VALUES (@op, @devclass, @backend, @port_id, @device_id, @frontend, @options, @state, @at)`,
        )
        .run(row),
    );
    return journalFromRow({ id: Number(lastInsertRowid), ...row });
  }

  complete(id: number): void {
    this.settle(id, 'done', null);
  }

  fail(id: number, code?: string): void {
    this.settle(id, 'failed', code === undefined ? null : check.errorCode(code));
  }

  /** Actions whose outcome is unknown (devgated died in between), oldest first: reconcile these at start. */
  pending(): JournalEntry[] {
    return this.connection.guard(() =>
      (
        this.connection
          .stmt("SELECT * FROM attachment_journal WHERE state = 'pending' ORDER BY id")
          .all() as JournalRow[]
      ).map(journalFromRow),
    );
  }

  entry(id: number): JournalEntry | undefined {
    const row = this.connection.guard(
      () => this.connection.stmt('SELECT * FROM attachment_journal WHERE id = ?').get(id) as JournalRow | undefined,
    );
    return row && journalFromRow(row);
  }

  /** Deletes settled entries finished before `before` (the audit log keeps the history); returns how many. */
  prune(before: Date | string): number {
    const cutoff = check.isoTime('before', before);
    return this.connection.guard(
      () =>
        this.connection.stmt("DELETE FROM attachment_journal WHERE state <> 'pending' AND finished_at < ?").run(cutoff)
          .changes,
    );
  }

  private settle(id: number, state: 'done' | 'failed', code: string | null): void {
    this.connection.guard(() => {
      const { changes } = this.connection
        .stmt(
          `UPDATE attachment_journal SET state = @state, finished_at = @at, code = @code
           WHERE id = @id AND state = 'pending'`,
        )
        .run({ id, state, code, at: this.connection.now().toISOString() });
      if (changes === 0) throw Errors.journalEntryNotPending({ id, state: this.entry(id)?.state ?? 'missing' });
    });
  }
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
