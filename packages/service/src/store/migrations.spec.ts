import fs from 'node:fs';
import Database from 'better-sqlite3';
import { MIGRATIONS, SCHEMA_VERSION, migrate, userVersion } from './migrations.js';
import { SqliteStateStore } from './state-store.js';
import { TempDir } from './testing/temp-store.js';

const TABLES = ['assignments', 'attachment_journal', 'audit_log', 'deny_list', 'devices_seen', 'policy_answers'];

let tmp: TempDir;
beforeEach(() => (tmp = new TempDir()));
afterEach(() => tmp.remove());

function inspect(file: string, fn: (db: Database.Database) => void): void {
  const db = new Database(file, { readonly: true });
  try {
    fn(db);
  } finally {
    db.close();
  }
}

describe('migrations', () => {
  it('are numbered 1..n in order', () => {
    expect(MIGRATIONS.map((m) => m.version)).toEqual(MIGRATIONS.map((_, i) => i + 1));
    expect(SCHEMA_VERSION).toBe(MIGRATIONS.length);
  });

  it('create the whole schema on an empty file, with the durability pragmas set', () => {
    const store = new SqliteStateStore(tmp.file());
    store.dispose();
    inspect(tmp.file(), (db) => {
      expect(userVersion(db)).toBe(SCHEMA_VERSION);
      const tables = db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").pluck().all();
      expect(tables).toEqual(expect.arrayContaining(TABLES));
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal'); // persistent in the file
    });
  });

  it('sets WAL, synchronous=FULL, foreign keys and a busy timeout on the connection', () => {
    const store = new SqliteStateStore(tmp.file(), { busyTimeoutMs: 1234 });
    expect(store.info()).toEqual({
      file: tmp.file(),
      schemaVersion: SCHEMA_VERSION,
      journalMode: 'wal',
      synchronous: 'full',
      foreignKeys: true,
      busyTimeoutMs: 1234,
    });
    expect(store.integrityCheck()).toEqual(['ok']);
    store.dispose();
  });

  it('re-open keeps the data and runs nothing again', () => {
    const first = new SqliteStateStore(tmp.file());
    first.denyLists.add('work', ['u03****']);
    first.dispose();
    const db = new Database(tmp.file());
    expect(migrate(db, tmp.file())).toEqual({ from: SCHEMA_VERSION, to: SCHEMA_VERSION });
    db.close();
    const second = new SqliteStateStore(tmp.file());
    expect(second.denyLists.get('work').patterns).toEqual(['u03****']);
    second.dispose();
  });

  it('refuse a database newer than the code, and leave it untouched', () => {
    new SqliteStateStore(tmp.file()).dispose();
    const db = new Database(tmp.file());
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    const before = fs.readFileSync(tmp.file());
    expect(() => new SqliteStateStore(tmp.file())).toThrow(
      expect.objectContaining({
        code: 'DG_STATE_TOO_NEW',
        message: expect.stringContaining(`version ${SCHEMA_VERSION + 1}`),
      }),
    );
    expect(fs.readFileSync(tmp.file()).equals(before)).toBe(true);
  });

  it('roll a failing migration back whole: the version and the schema stay as they were', () => {
    const db = new Database(tmp.file());
    const broken = [
      ...MIGRATIONS,
      { version: SCHEMA_VERSION + 1, description: 'broken', up: 'CREATE TABLE half (x); SELECT * FROM missing;' },
    ];
    expect(() => migrate(db, tmp.file(), broken)).toThrow(
      expect.objectContaining({ code: 'DG_STATE_MIGRATION_FAILED' }),
    );
    expect(userVersion(db)).toBe(SCHEMA_VERSION);
    expect(db.prepare("SELECT count(*) FROM sqlite_schema WHERE name = 'half'").pluck().get()).toBe(0);
    db.close();
  });

  it('run code migrations in the same transaction as the version bump', () => {
    const db = new Database(tmp.file());
    const withData = [
      ...MIGRATIONS,
      {
        version: SCHEMA_VERSION + 1,
        description: 'data',
        up: (d: Database.Database) => void d.prepare("INSERT INTO deny_list VALUES ('work', 'b******')").run(),
      },
    ];
    expect(migrate(db, tmp.file(), withData)).toEqual({ from: 0, to: SCHEMA_VERSION + 1 });
    expect(db.prepare('SELECT pattern FROM deny_list').pluck().all()).toEqual(['b******']);
    db.close();
  });

  it('turn a file that is not a database, or a missing directory, into a coded error', () => {
    fs.writeFileSync(tmp.file(), 'not a database, just text that is long enough to have a header'.repeat(20));
    expect(() => new SqliteStateStore(tmp.file())).toThrow(expect.objectContaining({ code: 'DG_STATE_UNAVAILABLE' }));
    expect(() => new SqliteStateStore(tmp.file('missing/state.db'))).toThrow(
      expect.objectContaining({
        code: 'DG_STATE_UNAVAILABLE',
        message: expect.stringContaining('directory does not exist'),
      }),
    );
  });

  it('keep a version 1 audit log, which can then be pruned from its oldest end only', () => {
    const db = new Database(tmp.file());
    migrate(db, tmp.file(), MIGRATIONS.slice(0, 1));
    const insert = db.prepare(
      "INSERT INTO audit_log (at, actor, action, outcome) VALUES (?, 'devgated', 'attach', 'ok')",
    );
    insert.run('2020-01-01T00:00:00.000Z');
    insert.run('2020-01-02T00:00:00.000Z');
    insert.run('2026-11-27T10:00:00.000Z');
    expect(() => db.prepare('DELETE FROM audit_log WHERE id = 1').run()).toThrow(/append-only/);
    db.close();
    const store = new SqliteStateStore(tmp.file());
    expect(store.info().schemaVersion).toBe(SCHEMA_VERSION);
    const pruning = store.audit.prune('2026-01-01T00:00:00.000Z', (pruned) => ({
      actor: 'devgated',
      action: 'audit-prune',
      outcome: 'ok',
      details: { pruned },
    }));
    expect(store.audit.query().map((e) => e.id)).toEqual([3, pruning!.id]);
    store.dispose();
  });
});
