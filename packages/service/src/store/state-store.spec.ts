import Database from 'better-sqlite3';
import { type DeviceAssignment, isDenied } from '@devgate/core';
import { toStateError } from './connection.js';
import { SqliteStateStore } from './state-store.js';
import { TempDir, usbDevice } from './testing/temp-store.js';

const STICK = '0781:5567:4c5300:u080650';
const MOUSE = '046d:c077::u030102';

let tmp: TempDir;
let store: SqliteStateStore;
let clock: Date;

beforeEach(() => {
  tmp = new TempDir();
  clock = new Date('2026-11-27T10:00:00.000Z');
  store = new SqliteStateStore(tmp.file(), { now: () => clock });
});
afterEach(() => {
  store.dispose();
  tmp.remove();
});

function tick(ms: number): void {
  clock = new Date(clock.getTime() + ms);
}

function assignment(portId: string, deviceId: string, frontend = 'work'): DeviceAssignment {
  return { devclass: 'usb', backend: 'sys-usb', portId, deviceId, frontend, mode: 'auto-attach', options: {} };
}

/** A second, raw connection: what another process (or `sqlite3` by hand) could try. */
function raw(fn: (db: Database.Database) => void): void {
  const db = new Database(tmp.file());
  try {
    fn(db);
  } finally {
    db.close();
  }
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return (error as { code?: string }).code;
  }
  return undefined;
}

describe('assignments', () => {
  it('assign, list with filters, unassign', () => {
    const a = store.assignments.add({ ...assignment('2-1', STICK), options: { 'read-only': 'true' } });
    expect(a).toEqual({
      ...assignment('2-1', STICK),
      options: { 'read-only': 'true' },
      createdAt: clock.toISOString(),
    });
    store.assignments.add({ ...assignment('*', MOUSE, 'personal'), mode: 'ask-to-attach' });
    store.assignments.add({ ...assignment('00_14.0', '*'), devclass: 'pci', backend: 'dom0', mode: 'required' });

    expect(store.assignments.list()).toHaveLength(3);
    expect(store.assignments.list({ frontend: 'personal' }).map((x) => x.deviceId)).toEqual([MOUSE]);
    expect(store.assignments.list({ devclass: 'pci' }).map((x) => x.mode)).toEqual(['required']);
    expect(store.assignments.list({ mode: 'auto-attach', backend: 'sys-usb' }).map((x) => x.portId)).toEqual(['2-1']);

    store.assignments.remove(assignment('2-1', STICK));
    expect(store.assignments.list({ frontend: 'work' })).toEqual([expect.objectContaining({ devclass: 'pci' })]);
  });

  it('turns the unique constraint into DG_ALREADY_ASSIGNED, and a missing one into DG_NOT_ASSIGNED', () => {
    store.assignments.add(assignment('2-1', STICK));
    expect(() => store.assignments.add({ ...assignment('2-1', STICK), mode: 'required' })).toThrow(
      expect.objectContaining({
        code: 'DG_ALREADY_ASSIGNED',
        message: `usb device sys-usb:2-1:${STICK} already assigned to work`,
      }),
    );
    // Same device, another frontend: a separate assignment.
    store.assignments.add(assignment('2-1', STICK, 'personal'));
    expect(codeOf(() => store.assignments.remove(assignment('2-2', STICK)))).toBe('DG_NOT_ASSIGNED');
  });

  it('rejects manual mode, *:* and malformed names with coded errors before writing', () => {
    expect(codeOf(() => store.assignments.add({ ...assignment('2-1', STICK), mode: 'manual' }))).toBe(
      'DG_MANUAL_NOT_ASSIGNABLE',
    );
    expect(codeOf(() => store.assignments.add({ ...assignment('2-1', STICK), mode: 'bogus' as never }))).toBe(
      'DG_INVALID_STATE_VALUE',
    );
    expect(codeOf(() => store.assignments.add(assignment('*', '*')))).toBe('DG_INVALID_STATE_VALUE');
    expect(codeOf(() => store.assignments.add(assignment('2-1', STICK, 'bad name')))).toBe('DG_INVALID_DOMAIN_NAME');
    expect(codeOf(() => store.assignments.add({ ...assignment('2-1', STICK), backend: '-x' }))).toBe(
      'DG_INVALID_DOMAIN_NAME',
    );
    expect(codeOf(() => store.assignments.add(assignment('2-1;drop', STICK)))).toBe('DG_INVALID_STATE_VALUE');
    expect(codeOf(() => store.assignments.add(assignment('2-1', 'id\u001b[31m')))).toBe('DG_INVALID_STATE_VALUE');
    expect(codeOf(() => store.assignments.add({ ...assignment('2-1', STICK), devclass: 'USB' }))).toBe(
      'DG_INVALID_STATE_VALUE',
    );
    expect(codeOf(() => store.assignments.add({ ...assignment('2-1', STICK), options: { 'bad key': 'x' } }))).toBe(
      'DG_INVALID_STATE_VALUE',
    );
    expect(store.assignments.list()).toEqual([]);
  });

  it('assignments.matching: most specific first (port+device, port, device), only real matches', () => {
    store.assignments.add(assignment('*', STICK));
    store.assignments.add(assignment('2-1', '*'));
    store.assignments.add(assignment('2-1', STICK));
    store.assignments.add(assignment('2-1', '*', 'personal'));
    store.assignments.add(assignment('2-2', STICK)); // another port
    store.assignments.add(assignment('2-1', MOUSE)); // another device
    store.assignments.add({ ...assignment('2-1', STICK), backend: 'dom0' }); // another backend

    const stick = usbDevice('2-1', STICK);
    const forWork = store.assignments.matching(stick, 'work');
    expect(forWork.map((a) => `${a.portId} ${a.deviceId}`)).toEqual([`2-1 ${STICK}`, '2-1 *', `* ${STICK}`]);
    expect(store.assignments.matching(stick).map((a) => a.frontend)).toEqual(['work', 'personal', 'work', 'work']);
    expect(store.assignments.matching(usbDevice('3-1', 'other'))).toEqual([]);
  });
});

describe('deny list', () => {
  it('add, remove, replace and read back normalised (deduplicated, sorted)', () => {
    expect(store.denyLists.get('work')).toEqual({ frontend: 'work', patterns: [] });
    expect(store.denyLists.add('work', ['u03****', 'b******', 'u03****']).patterns).toEqual(['b******', 'u03****']);
    store.denyLists.add('personal', ['m******']);
    expect(store.denyLists.remove('work', ['b******', 'p******']).patterns).toEqual(['u03****']);
    expect(store.denyLists.set('personal', ['u0e****', 'u06****']).patterns).toEqual(['u06****', 'u0e****']);
    expect(store.denyLists.all()).toEqual([
      { frontend: 'personal', patterns: ['u06****', 'u0e****'] },
      { frontend: 'work', patterns: ['u03****'] },
    ]);
    expect(isDenied(store.denyLists.get('work'), usbDevice('2-3', MOUSE, ['u030102']))).toBe(true);
    expect(store.denyLists.set('work', []).patterns).toEqual([]);
  });

  it('rejects a bad pattern with Qubes wording and writes none of the batch', () => {
    expect(() => store.denyLists.add('work', ['u03****', 'x123456'])).toThrow(
      expect.objectContaining({ code: 'DG_INVALID_INTERFACE_PATTERN', message: expect.stringContaining('chhhhhh') }),
    );
    expect(codeOf(() => store.denyLists.set('work', ['U03****']))).toBe('DG_INVALID_INTERFACE_PATTERN');
    expect(codeOf(() => store.denyLists.add('work', ['u03***']))).toBe('DG_INVALID_INTERFACE_PATTERN');
    expect(store.denyLists.all()).toEqual([]);
  });
});

describe('policy answers', () => {
  const base = { devclass: 'usb', backend: 'sys-usb', frontend: 'work' };

  it('remembers answers; the most specific unexpired one wins', () => {
    store.answers.remember({ ...base, portId: '*', deviceId: STICK, verdict: 'allow' });
    store.answers.remember({ ...base, portId: '2-1', deviceId: '*', verdict: 'deny' });
    const stick = usbDevice('2-1', STICK);
    expect(store.answers.lookup(stick, 'work')?.verdict).toBe('deny'); // port beats device
    store.answers.remember({
      ...base,
      portId: '2-1',
      deviceId: STICK,
      verdict: 'allow',
      expiresAt: '2026-11-27T11:00:00.000Z',
    });
    expect(store.answers.lookup(stick, 'work')).toEqual({
      ...base,
      portId: '2-1',
      deviceId: STICK,
      verdict: 'allow',
      createdAt: clock.toISOString(),
      expiresAt: '2026-11-27T11:00:00.000Z',
    });
    tick(3_600_000); // the specific answer expires exactly now
    expect(store.answers.lookup(stick, 'work')?.verdict).toBe('deny');
    expect(store.answers.lookup(stick, 'personal')).toBeUndefined();
    expect(store.answers.lookup(usbDevice('2-9', STICK), 'work')?.verdict).toBe('allow');
  });

  it('a new answer for the same scope replaces the old one; forget removes them', () => {
    store.answers.remember({ ...base, portId: '2-1', deviceId: STICK, verdict: 'deny' });
    store.answers.remember({ ...base, portId: '2-1', deviceId: STICK, verdict: 'allow' });
    expect(store.answers.lookup(usbDevice('2-1', STICK), 'work')?.verdict).toBe('allow');
    store.answers.remember({ ...base, frontend: 'personal', portId: '2-1', deviceId: STICK, verdict: 'deny' });
    expect(store.answers.forgetAll({ frontend: 'work' })).toBe(1);
    expect(store.answers.forgetAll()).toBe(1);
    expect(codeOf(() => store.answers.remember({ ...base, portId: '*', deviceId: '*', verdict: 'allow' }))).toBe(
      'DG_INVALID_STATE_VALUE',
    );
    expect(
      codeOf(() => store.answers.remember({ ...base, portId: '2-1', deviceId: STICK, verdict: 'ask' as never })),
    ).toBe('DG_INVALID_STATE_VALUE');
  });
});

describe('devices seen', () => {
  it('is new only the first time an identity is seen, wherever it is plugged', () => {
    expect(store.seen.note(usbDevice('2-1', STICK))).toEqual({ isNew: true, firstSeen: '2026-11-27T10:00:00.000Z' });
    tick(5000);
    expect(store.seen.note(usbDevice('3-4', STICK))).toEqual({ isNew: false, firstSeen: '2026-11-27T10:00:00.000Z' });
    expect(store.seen.get('usb', STICK)).toEqual({
      devclass: 'usb',
      deviceId: STICK,
      backend: 'sys-usb',
      portId: '3-4',
      firstSeen: '2026-11-27T10:00:00.000Z',
      lastSeen: '2026-11-27T10:00:05.000Z',
      description: 'USB_Storage: unknown vendor unknown usb device',
    });
    expect(store.seen.note(usbDevice('2-1', MOUSE, ['u030102'])).isNew).toBe(true);
  });
});

describe('audit log', () => {
  function seed(): void {
    const rows = [
      { action: 'attach', frontend: 'work', devclass: 'usb', outcome: 'ok' },
      { action: 'attach', frontend: 'personal', devclass: 'block', outcome: 'denied', code: 'DG_POLICY_DENIED' },
      { action: 'detach', frontend: 'work', devclass: 'block', outcome: 'ok' },
      { action: 'ask', frontend: 'work', devclass: 'usb', outcome: 'ok' },
      { action: 'auto-attach', frontend: 'work', devclass: 'usb', outcome: 'error', code: 'DG_QMP_TIMEOUT' },
    ] as const;
    for (const row of rows) {
      store.audit.append({ actor: 'uid:1000(alice)', backend: 'sys-usb', portId: '2-1', deviceId: STICK, ...row });
      tick(1000);
    }
  }

  it('appends entries with ids, ms timestamps and JSON details', () => {
    const entry = store.audit.append({
      actor: 'devgated',
      action: 'surprise-removal',
      outcome: 'ok',
      reason: 'device removed while attached',
      details: { wasAttachedTo: 'work', options: { 'read-only': 'true' } },
    });
    expect(entry).toEqual({
      id: 1,
      at: '2026-11-27T10:00:00.000Z',
      actor: 'devgated',
      action: 'surprise-removal',
      outcome: 'ok',
      reason: 'device removed while attached',
      details: { wasAttachedTo: 'work', options: { 'read-only': 'true' } },
    });
    expect(store.audit.query()).toEqual([entry]);
  });

  it('filters by time window, action, frontend and class, and pages', () => {
    seed();
    const actions = (q: Parameters<SqliteStateStore['audit']['query']>[0]) => store.audit.query(q).map((e) => e.id);
    expect(actions({})).toEqual([1, 2, 3, 4, 5]);
    expect(actions({ since: '2026-11-27T10:00:01.000Z', until: new Date('2026-11-27T10:00:03.000Z') })).toEqual([2, 3]);
    expect(actions({ action: 'attach' })).toEqual([1, 2]);
    expect(actions({ frontend: 'work', devclass: 'usb' })).toEqual([1, 4, 5]);
    expect(actions({ frontend: 'work', order: 'desc', limit: 2 })).toEqual([5, 4]);
    expect(actions({ limit: 2, offset: 2 })).toEqual([3, 4]);
    expect(actions({ action: 'unassign' })).toEqual([]);
    expect(store.audit.query({ action: 'auto-attach' })[0]).toMatchObject({ outcome: 'error', code: 'DG_QMP_TIMEOUT' });
  });

  it('takes a time in any zone the API lets through (RFC 3339), as that instant in UTC', () => {
    // The API accepts `date-time` with any offset; only `...SS.mmmZ` used to get past the store.
    seed();
    const since = (time: string) => store.audit.query({ since: time }).map((e) => e.id);
    for (const time of [
      '2026-11-27T10:00:02.000Z',
      '2026-11-27T10:00:02Z',
      '2026-11-27T11:00:02+01:00',
      '2026-11-27T05:00:02.000-05:00',
      '2026-11-27T11:30:02+0130',
      '2026-11-27 11:00:02+01',
      '2026-11-27t10:00:02z',
    ])
      expect([time, since(time)]).toEqual([time, [3, 4, 5]]);
    expect(since('2026-11-27T10:00:02.5Z')).toEqual([4, 5]);
    const entry = store.audit.append({
      actor: 'devgated',
      action: 'attach',
      outcome: 'ok',
      at: '2026-11-27T09:00:00-02:00',
    });
    expect(entry.at).toBe('2026-11-27T11:00:00.000Z');
    for (const bad of [
      '2026-11-27T10:00:02',
      '2026-02-31T10:00:00Z',
      '2026-11-27T24:00:00Z',
      '2026-11-27T10:00:60Z',
      '2026-11-27T10:00:00+01:60',
      '2026-11-27T10:00:00+99:00',
      '+012026-11-27T10:00:00.000Z',
    ])
      expect([bad, codeOf(() => store.audit.query({ since: bad }))]).toEqual([bad, 'DG_INVALID_STATE_VALUE']);
    expect(codeOf(() => store.audit.query({ since: new Date(Date.UTC(10_000, 0)) }))).toBe('DG_INVALID_STATE_VALUE');
  });

  it('lists in the order written, when the clock was set back in between', () => {
    // A clock set back (an RTC keeping local time, corrected by NTP after boot) must not hide what
    // happened since behind what was stamped "later" before, nor page it out of `desc, limit`.
    const entry = (portId: string) =>
      store.audit.append({ actor: 'devgated', action: 'attach', outcome: 'ok', backend: 'dom0', portId }).id;
    const before = [entry('sda'), entry('sdb')];
    tick(-2 * 3600_000);
    const after = [entry('sdc'), entry('sdd')];
    expect(store.audit.query({ order: 'desc', limit: 2 }).map((e) => e.id)).toEqual([...after].reverse());
    expect(store.audit.query().map((e) => e.id)).toEqual([...before, ...after]);
  });

  it('validates entries and queries', () => {
    const ok = { actor: 'devgated', action: 'attach', outcome: 'ok' } as const;
    expect(codeOf(() => store.audit.append({ ...ok, action: 'Attach!' }))).toBe('DG_INVALID_STATE_VALUE');
    expect(codeOf(() => store.audit.append({ ...ok, outcome: 'maybe' as never }))).toBe('DG_INVALID_STATE_VALUE');
    expect(codeOf(() => store.audit.append({ ...ok, actor: '' }))).toBe('DG_INVALID_STATE_VALUE');
    expect(codeOf(() => store.audit.append({ ...ok, at: '2026-11-27 10:00' }))).toBe('DG_INVALID_STATE_VALUE');
    expect(codeOf(() => store.audit.append({ ...ok, code: 'lower' }))).toBe('DG_INVALID_STATE_VALUE');
    expect(codeOf(() => store.audit.append({ ...ok, details: { big: 'x'.repeat(70_000) } }))).toBe(
      'DG_INVALID_STATE_VALUE',
    );
    expect(codeOf(() => store.audit.query({ limit: 10_001 }))).toBe('DG_INVALID_STATE_VALUE');
    expect(codeOf(() => store.audit.query({ since: 'yesterday' }))).toBe('DG_INVALID_STATE_VALUE');
    expect(store.audit.query()).toEqual([]);
  });

  it('is append-only in the database itself', () => {
    seed();
    raw((db) => {
      expect(() => db.prepare("UPDATE audit_log SET outcome = 'ok'").run()).toThrow(/append-only/);
      expect(() => db.prepare('DELETE FROM audit_log').run()).toThrow(/append-only/);
    });
    expect(store.audit.query()).toHaveLength(5);
  });
});

describe('audit log retention', () => {
  const DAY = 86_400_000;
  const entry = (portId: string) =>
    store.audit.append({ actor: 'devgated', action: 'attach', outcome: 'ok', backend: 'dom0', portId }).id;
  const record = (pruned: number) => ({
    actor: 'devgated',
    action: 'audit-prune',
    outcome: 'ok' as const,
    reason: `${pruned} pruned`,
    details: { pruned },
  });
  const ids = () => store.audit.query({ limit: 10_000 }).map((e) => e.id);
  const daysAgo = (days: number) => new Date(clock.getTime() - days * DAY);

  it('removes the entries older than the cutoff, with an entry saying how many', () => {
    const old = [entry('sda'), entry('sdb')];
    tick(10 * DAY);
    const recent = entry('sdc');
    const pruning = store.audit.prune(daysAgo(5), record);
    expect(pruning).toMatchObject({ action: 'audit-prune', reason: '2 pruned', details: { pruned: 2 } });
    expect(ids()).toEqual([recent, pruning!.id]);
    expect(ids()).not.toContain(old[0]);
    // Nothing that old any more: nothing removed, nothing written.
    expect(store.audit.prune(daysAgo(5), record)).toBeUndefined();
    expect(ids()).toEqual([recent, pruning!.id]);
  });

  it('keeps an entry stamped at the cutoff, and the pruning entry when every other one was older', () => {
    entry('sda');
    tick(DAY);
    const atCutoff = entry('sdb');
    expect(store.audit.prune(clock, record)).toMatchObject({ details: { pruned: 1 } });
    tick(DAY);
    const pruning = store.audit.prune(clock, record);
    expect(pruning).toMatchObject({ details: { pruned: 2 } });
    expect(ids()).toEqual([pruning!.id]);
    expect(atCutoff).toBeLessThan(pruning!.id);
  });

  it('never prunes past an entry it keeps: one stamped early but written after it waits (a clock set back)', () => {
    const first = entry('sda');
    tick(10 * DAY);
    const recent = entry('sdb');
    tick(-20 * DAY);
    const stampedEarly = entry('sdc');
    tick(20 * DAY);
    const pruning = store.audit.prune(daysAgo(5), record);
    expect(pruning).toMatchObject({ details: { pruned: 1 } });
    expect(ids()).toEqual([recent, stampedEarly, pruning!.id]);
    expect(ids()).not.toContain(first);
  });

  it('is one transaction: a pruning entry the log refuses prunes nothing', () => {
    entry('sda');
    tick(10 * DAY);
    const before = ids();
    expect(codeOf(() => store.audit.prune(daysAgo(5), () => ({ ...record(1), action: 'Prune!' })))).toBe(
      'DG_INVALID_STATE_VALUE',
    );
    expect(ids()).toEqual(before);
  });

  it('holds in the database itself: only the oldest entries go, never one in the middle nor the newest', () => {
    const [a, b, c] = [entry('sda'), entry('sdb'), entry('sdc')];
    raw((db) => {
      expect(() => db.prepare('DELETE FROM audit_log WHERE id = ?').run(b)).toThrow(/append-only/);
      expect(() => db.prepare('DELETE FROM audit_log WHERE id = ?').run(c)).toThrow(/append-only/);
      expect(() => db.prepare('DELETE FROM audit_log').run()).toThrow(/append-only/);
      expect(db.prepare('DELETE FROM audit_log WHERE id = ?').run(a).changes).toBe(1);
    });
    expect(ids()).toEqual([b, c]);
  });
});

describe('attachment journal', () => {
  const intent = { op: 'attach', devclass: 'block', backend: 'dom0', portId: 'loop3', frontend: 'work' } as const;

  it('begin -> pending -> done or failed; settled entries leave pending()', () => {
    const a = store.journal.begin({ ...intent, deviceId: ':3', options: { 'read-only': 'true' } });
    tick(10);
    const b = store.journal.begin({ ...intent, op: 'detach', portId: 'loop4' });
    expect(a).toEqual({
      id: 1,
      ...intent,
      deviceId: ':3',
      options: { 'read-only': 'true' },
      state: 'pending',
      at: '2026-11-27T10:00:00.000Z',
    });
    expect(store.journal.pending().map((e) => e.id)).toEqual([a.id, b.id]);

    tick(10);
    store.journal.complete(a.id);
    store.journal.fail(b.id, 'DG_QMP_TIMEOUT');
    expect(store.journal.pending()).toEqual([]);
    expect(store.journal.entry(a.id)).toMatchObject({ state: 'done', finishedAt: '2026-11-27T10:00:00.020Z' });
    expect(store.journal.entry(b.id)).toMatchObject({ state: 'failed', code: 'DG_QMP_TIMEOUT' });

    expect(() => store.journal.complete(a.id)).toThrow(
      expect.objectContaining({
        code: 'DG_JOURNAL_NOT_PENDING',
        message: 'attachment journal entry 1 is done, not pending',
      }),
    );
    expect(codeOf(() => store.journal.fail(99))).toBe('DG_JOURNAL_NOT_PENDING');
  });

  it('survives a re-open with its pending entries (what start-up reconciles), and prunes settled ones', () => {
    const a = store.journal.begin(intent);
    const b = store.journal.begin({ ...intent, portId: 'loop5' });
    store.journal.complete(b.id);
    store.dispose();
    store = new SqliteStateStore(tmp.file(), { now: () => clock });
    expect(store.journal.pending()).toEqual([a]);
    tick(1);
    expect(store.journal.prune(clock)).toBe(1);
    expect(store.journal.entry(b.id)).toBeUndefined();
    expect(store.journal.entry(a.id)).toEqual(a);
  });
});

describe('errors and transactions', () => {
  it('the schema enforces its rules against any writer, and toStateError codes them', () => {
    const now = clock.toISOString();
    const violations = [
      `INSERT INTO assignments (devclass, backend, port_id, device_id, frontend, mode, created_at)
         VALUES ('usb', 'sys-usb', '*', '*', 'work', 'auto-attach', '${now}')`,
      `INSERT INTO assignments (devclass, backend, port_id, device_id, frontend, mode, created_at)
         VALUES ('usb', 'sys-usb', '2-1', 'x', 'work', 'manual', '${now}')`,
      `INSERT INTO deny_list VALUES ('work', 'u03***x')`,
      `INSERT INTO attachment_journal (op, devclass, backend, port_id, frontend, state, at)
         VALUES ('attach', 'usb', 'sys-usb', '2-1', 'work', 'done', '${now}')`,
      `INSERT INTO audit_log (at, actor, action, outcome, details) VALUES ('${now}', 'a', 'b', 'ok', '[1]')`,
    ];
    raw((db) => {
      for (const sql of violations) {
        let mapped: unknown;
        try {
          db.prepare(sql).run();
        } catch (error) {
          mapped = toStateError(error, tmp.file());
        }
        expect(mapped).toMatchObject({
          code: 'DG_STATE_CONSTRAINT',
          message: expect.stringContaining('constraint_check'),
        });
      }
    });
  });

  it('transaction() commits all or nothing', () => {
    expect(() =>
      store.transaction(() => {
        store.assignments.add(assignment('2-1', STICK));
        store.audit.append({ actor: 'devgated', action: 'assign', outcome: 'ok' });
        store.assignments.add(assignment('2-1', STICK)); // duplicate: rolls the whole transaction back
      }),
    ).toThrow(expect.objectContaining({ code: 'DG_ALREADY_ASSIGNED' }));
    expect(store.assignments.list()).toEqual([]);
    expect(store.audit.query()).toEqual([]);
  });

  it('another process holding the write lock gives DG_STATE_BUSY after the busy timeout', () => {
    const impatient = new SqliteStateStore(tmp.file(), { busyTimeoutMs: 50 });
    raw((db) => {
      db.prepare('BEGIN IMMEDIATE').run();
      expect(codeOf(() => impatient.audit.append({ actor: 'devgated', action: 'attach', outcome: 'ok' }))).toBe(
        'DG_STATE_BUSY',
      );
      db.prepare('ROLLBACK').run();
    });
    expect(impatient.audit.append({ actor: 'devgated', action: 'attach', outcome: 'ok' }).id).toBe(1);
    impatient.dispose();
  });

  it('a disposed store refuses calls with DG_STATE_CLOSED', () => {
    store.dispose();
    expect(codeOf(() => store.assignments.list())).toBe('DG_STATE_CLOSED');
    store.dispose(); // idempotent
  });
});
