/**
 * The state schema as an ordered list of migrations. `PRAGMA user_version` holds the version a
 * database is at; each migration runs in its own transaction together with the version bump, so a
 * crash or an error leaves the database at the previous version, never half-migrated. Append new
 * migrations; never edit one that has shipped.
 */
import type Database from 'better-sqlite3';
import { Errors } from '@devgate/core';

export interface Migration {
  readonly version: number;
  readonly description: string;
  /** SQL, or code for data migrations (it runs inside the migration's transaction). */
  readonly up: string | ((db: Database.Database) => void);
}

// Every `at`-like column holds `Date.toISOString()` text (UTC, ms, `Z`): text order is time order.
// Tables are STRICT so a wrong type is an error rather than a silent conversion.
const V1 = `
CREATE TABLE assignments (
  id         INTEGER PRIMARY KEY,
  devclass   TEXT NOT NULL,
  backend    TEXT NOT NULL,
  port_id    TEXT NOT NULL,
  device_id  TEXT NOT NULL,
  frontend   TEXT NOT NULL,
  -- 'manual' is an attachment, never an assignment: it is not persisted (Qubes rejects assigning it).
  mode       TEXT NOT NULL CHECK (mode IN ('ask-to-attach', 'auto-attach', 'required')),
  options    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(options) AND json_type(options) = 'object'),
  created_at TEXT NOT NULL,
  UNIQUE (devclass, backend, port_id, device_id, frontend),
  -- '*' means any port or any device, but an assignment matching every device is forbidden.
  CHECK (NOT (port_id = '*' AND device_id = '*'))
) STRICT;

CREATE TABLE deny_list (
  frontend TEXT NOT NULL,
  pattern  TEXT NOT NULL CHECK (pattern GLOB '[upbmi?*][0-9a-f*][0-9a-f*][0-9a-f*][0-9a-f*][0-9a-f*][0-9a-f*]'),
  PRIMARY KEY (frontend, pattern)
) STRICT, WITHOUT ROWID;

CREATE TABLE policy_answers (
  devclass   TEXT NOT NULL,
  backend    TEXT NOT NULL,
  port_id    TEXT NOT NULL,
  device_id  TEXT NOT NULL,
  frontend   TEXT NOT NULL,
  verdict    TEXT NOT NULL CHECK (verdict IN ('allow', 'deny')),
  created_at TEXT NOT NULL,
  expires_at TEXT,
  PRIMARY KEY (devclass, backend, port_id, device_id, frontend),
  CHECK (NOT (port_id = '*' AND device_id = '*'))
) STRICT;

-- Keyed by identity, not location: a device is new the first time its device id is seen anywhere.
CREATE TABLE devices_seen (
  devclass    TEXT NOT NULL,
  device_id   TEXT NOT NULL,
  backend     TEXT NOT NULL,
  port_id     TEXT NOT NULL,
  first_seen  TEXT NOT NULL,
  last_seen   TEXT NOT NULL,
  description TEXT,
  PRIMARY KEY (devclass, device_id)
) STRICT;

-- AUTOINCREMENT: an id is never reused, so an audit reference stays unambiguous.
CREATE TABLE audit_log (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  at        TEXT NOT NULL,
  actor     TEXT NOT NULL,
  action    TEXT NOT NULL,
  devclass  TEXT,
  backend   TEXT,
  port_id   TEXT,
  device_id TEXT,
  frontend  TEXT,
  outcome   TEXT NOT NULL CHECK (outcome IN ('ok', 'denied', 'error')),
  code      TEXT,
  reason    TEXT,
  details   TEXT CHECK (details IS NULL OR (json_valid(details) AND json_type(details) = 'object'))
) STRICT;
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_frontend_at ON audit_log (frontend, at);
-- Append-only, enforced by the database itself rather than by convention.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
  BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
  BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- Intent written before a hypervisor action and settled after it: a row still pending at start-up
-- is an action whose outcome devgated never learnt, to be reconciled with the hypervisor.
CREATE TABLE attachment_journal (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  op          TEXT NOT NULL CHECK (op IN ('attach', 'detach')),
  devclass    TEXT NOT NULL,
  backend     TEXT NOT NULL,
  port_id     TEXT NOT NULL,
  device_id   TEXT,
  frontend    TEXT NOT NULL,
  options     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(options) AND json_type(options) = 'object'),
  state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
  at          TEXT NOT NULL,
  finished_at TEXT,
  code        TEXT,
  CHECK ((state = 'pending') = (finished_at IS NULL))
) STRICT;
CREATE INDEX attachment_journal_pending ON attachment_journal (id) WHERE state = 'pending';
`;

// Retention (the configuration's audit.keepDays) prunes the audit log, from its oldest end only: a
// deletion that would leave a hole, or take the newest entry (the log never empties), is refused, so
// what remains is always everything written since some point.
const V2 = `
DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_oldest_first BEFORE DELETE ON audit_log
  WHEN OLD.id <> (SELECT min(id) FROM audit_log) OR OLD.id = (SELECT max(id) FROM audit_log)
  BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: only its oldest entries are pruned, never its newest'); END;
`;

export const MIGRATIONS: readonly Migration[] = [
  { version: 1, description: 'initial schema', up: V1 },
  { version: 2, description: 'audit log retention: pruned from its oldest end', up: V2 },
];

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

export function userVersion(db: Database.Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Brings the database to the newest version in `migrations`. Refuses a database newer than the
 * code: running old code on it could drop what the new schema means.
 */
export function migrate(
  db: Database.Database,
  file: string,
  migrations: readonly Migration[] = MIGRATIONS,
): { from: number; to: number } {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new Error(`migration #${i} has version ${m.version}, expected ${i + 1}`);
  });
  const latest = migrations.length;
  const from = userVersion(db);
  if (from > latest) throw Errors.stateTooNew({ file, version: from, supported: latest });
  for (const migration of migrations.slice(from)) {
    // IMMEDIATE takes the write lock first, so two processes opening the same new file cannot both
    // run a migration; the loser waits (busy_timeout) and finds the work done.
    const step = db.transaction(() => {
      if (userVersion(db) >= migration.version) return;
      if (typeof migration.up === 'string') db.exec(migration.up);
      else migration.up(db);
      // PRAGMA takes no bound parameters; the value is an integer from this file, checked above.
      db.pragma(`user_version = ${migration.version}`);
    });
    try {
      step.immediate();
    } catch (error) {
      throw Errors.stateMigrationFailed({ file, version: migration.version, reason: (error as Error).message });
    }
  }
  return { from, to: Math.max(from, latest) };
}
