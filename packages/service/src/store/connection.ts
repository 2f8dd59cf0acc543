/**
 * The SQLite connection every table of the state store shares: the database handle, opened with the
 * store's settings and migrated; the prepared-statement cache; the guard that turns SQLite's errors
 * into coded DevgateErrors; and the clock for every timestamp written.
 */
import type Database from 'better-sqlite3';
import { DevgateError, Errors } from '@devgate/core';
import { migrate } from './migrations.js';
import * as check from './validate.js';

export interface StoreConnectionOptions {
  /** The clock for every timestamp the store writes; tests fix it. */
  readonly now?: () => Date;
  /** How long a call waits for another process's lock before DG_STATE_BUSY. */
  readonly busyTimeoutMs?: number;
}

/**
 * better-sqlite3, loaded when a store is first opened: a command that opens none (a listing, most
 * of what the CLI does without devgated) does not load the addon (ADR 0014).
 */
function openDriver(): typeof Database {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('better-sqlite3') as typeof Database;
}

export class StoreConnection {
  readonly db: Database.Database;
  readonly now: () => Date;
  private readonly statements = new Map<string, Database.Statement>();

  constructor(
    readonly file: string,
    options: StoreConnectionOptions = {},
  ) {
    this.now = options.now ?? (() => new Date());
    try {
      this.db = new (openDriver())(file);
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

  close(): void {
    if (this.db.open) this.db.close();
  }

  /**
   * Runs `fn` in one transaction: all its writes or none, and one fsync instead of one per write.
   * `fn` must be synchronous (a returned promise would commit before it settles); nested calls
   * become savepoints.
   */
  transaction<T>(fn: () => T): T {
    return this.guard(() => this.db.transaction(fn).immediate());
  }

  /** Prepared once per SQL text, which is always a literal (or fixed fragments) from a table's file. */
  stmt(sql: string): Database.Statement {
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      this.statements.set(sql, statement);
    }
    return statement;
  }

  /** Every call into SQLite goes through here: a closed store and SQLite's errors become coded errors. */
  guard<T>(fn: () => T): T {
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
export function sqliteCode(error: unknown): string | undefined {
  const { name, code } = (typeof error === 'object' && error !== null ? error : {}) as {
    name?: unknown;
    code?: unknown;
  };
  return name === 'SqliteError' && typeof code === 'string' && code.startsWith('SQLITE_') ? code : undefined;
}

/** `{ key: value }` for the non-null values of a row only, so optional fields are absent rather than null. */
export function present<T extends Record<string, unknown>>(fields: T): { [K in keyof T]?: NonNullable<T[K]> } {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== null)) as never;
}
