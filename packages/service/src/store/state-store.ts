/**
 * devgated's persistent state in one SQLite file, one table per job: assignments, deny lists,
 * remembered policy answers, devices seen, the audit log and the attachment journal, each in its own
 * file over one shared connection (./connection.ts). Synchronous (better-sqlite3): every call is
 * one short local transaction, and a synchronous store keeps "written, then acted" ordering obvious.
 *
 * Values are always bound as parameters. Strings from devices arrive as SafeText; nothing here
 * sanitizes, it only validates shapes (./validate.ts) so bad input fails at the call that made it.
 */
import { type StateStore } from '@devgate/core';
import { Assignments } from './assignments.js';
import { AttachmentJournal } from './attachment-journal.js';
import { AuditLog } from './audit-log.js';
import { StoreConnection, type StoreConnectionOptions } from './connection.js';
import { DenyLists } from './deny-lists.js';
import { DevicesSeen } from './devices-seen.js';
import { userVersion } from './migrations.js';
import { PolicyAnswers } from './policy-answers.js';

export type SqliteStateStoreOptions = StoreConnectionOptions;

export interface StoreInfo {
  readonly file: string;
  readonly schemaVersion: number;
  readonly journalMode: string;
  readonly synchronous: 'off' | 'normal' | 'full' | 'extra';
  readonly foreignKeys: boolean;
  readonly busyTimeoutMs: number;
}

export class SqliteStateStore implements StateStore {
  readonly id = 'sqlite';
  readonly assignments: Assignments;
  /** Qubes' devices_denied, per frontend. */
  readonly denyLists: DenyLists;
  /** Answers to asks the user chose to remember. */
  readonly answers: PolicyAnswers;
  readonly seen: DevicesSeen;
  readonly audit: AuditLog;
  /** Intent before a hypervisor action, settled after it. */
  readonly journal: AttachmentJournal;
  private readonly connection: StoreConnection;

  constructor(
    readonly file: string,
    options: SqliteStateStoreOptions = {},
  ) {
    this.connection = new StoreConnection(file, options);
    this.assignments = new Assignments(this.connection);
    this.denyLists = new DenyLists(this.connection);
    this.answers = new PolicyAnswers(this.connection);
    this.seen = new DevicesSeen(this.connection);
    this.audit = new AuditLog(this.connection);
    this.journal = new AttachmentJournal(this.connection);
  }

  dispose(): void {
    this.connection.close();
  }

  /**
   * Runs `fn` in one transaction: all its writes or none, and one fsync instead of one per write.
   * `fn` must be synchronous (a returned promise would commit before it settles); nested calls
   * become savepoints.
   */
  transaction<T>(fn: () => T): T {
    return this.connection.transaction(fn);
  }

  /** The settings in force on this connection, for status output and tests. */
  info(): StoreInfo {
    const { db } = this.connection;
    return this.connection.guard(() => ({
      file: this.file,
      schemaVersion: userVersion(db),
      journalMode: db.pragma('journal_mode', { simple: true }) as string,
      synchronous: (['off', 'normal', 'full', 'extra'] as const)[db.pragma('synchronous', { simple: true }) as number],
      foreignKeys: db.pragma('foreign_keys', { simple: true }) === 1,
      busyTimeoutMs: db.pragma('busy_timeout', { simple: true }) as number,
    }));
  }

  /** SQLite's own consistency check: `['ok']`, or the problems it found. Reads the whole file. */
  integrityCheck(): string[] {
    return this.connection
      .guard(() => this.connection.db.pragma('integrity_check', { simple: false }) as { integrity_check: string }[])
      .map((row) => row.integrity_check);
  }
}
