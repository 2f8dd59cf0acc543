import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { errorCode } from '@devgate/core';
import { type AuditEntry, SqliteStateStore } from '@devgate/service';
import { AuditRetention } from './audit-retention.js';

const DAY = 86_400_000;
let dir: string;
let clock: Date;
let store: SqliteStateStore;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'audit-retention-'));
  clock = new Date('2026-11-27T10:00:00.000Z');
  store = new SqliteStateStore(path.join(dir, 'state.db'), { now: () => clock });
});
afterEach(() => {
  store.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

const tick = (ms: number) => (clock = new Date(clock.getTime() + ms));
const append = (reason: string) => store.audit.append({ actor: 'devgated', action: 'attach', outcome: 'ok', reason });
const reasons = () => store.audit.query({ limit: 10_000 }).map((e) => e.reason);
/** Timers that keep the process alive (an unref'd one does not count). */
const refTimers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
const waitFor = async (what: string, check: () => boolean) => {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`no ${what} within 5 s`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
};

it('prunes at start, then at every interval, on a timer that never keeps the process alive, until disposed', async () => {
  append('day 0');
  tick(40 * DAY);
  append('day 40');
  const pruned: AuditEntry[] = [];
  const warnings: string[] = [];
  const retention = new AuditRetention(store, {
    keepDays: 30,
    now: () => clock,
    pruned: (entry) => pruned.push(entry),
    failed: (error) => {
      throw error;
    },
    warn: (_fields, message) => warnings.push(message),
  });
  const timers = refTimers();
  retention.start(20);
  expect(refTimers()).toBe(timers);
  expect(pruned).toEqual([
    expect.objectContaining({
      actor: 'devgated',
      action: 'audit-prune',
      outcome: 'ok',
      reason: '1 audit entry older than 30 days pruned',
      details: { pruned: 1, keepDays: 30, before: '2026-12-07T10:00:00.000Z' },
    }),
  ]);
  expect(reasons()).toEqual(['day 40', '1 audit entry older than 30 days pruned']);

  tick(40 * DAY);
  append('day 80');
  await waitFor('the next pruning', () => pruned.length === 2);
  expect(reasons()).toEqual(['day 80', '2 audit entries older than 30 days pruned']);

  retention.dispose();
  tick(40 * DAY);
  await new Promise((resolve) => setTimeout(resolve, 100));
  expect(pruned).toHaveLength(2);
  expect(warnings).toEqual([]);
});

it('says nothing when nothing is that old, and hands a failure over rather than throwing it', () => {
  append('day 0');
  const pruned: AuditEntry[] = [];
  const failures: string[] = [];
  const retention = new AuditRetention(store, {
    keepDays: 30,
    now: () => clock,
    pruned: (entry) => pruned.push(entry),
    failed: (error) => failures.push(String(errorCode(error))),
    warn: () => undefined,
  });
  retention.start();
  expect(pruned).toEqual([]);
  expect(reasons()).toEqual(['day 0']);
  retention.dispose();
  store.dispose();
  const closed = new AuditRetention(store, {
    keepDays: 30,
    pruned: () => undefined,
    failed: (error) => failures.push(String(errorCode(error))),
    warn: () => undefined,
  });
  closed.start();
  closed.dispose();
  expect(failures).toEqual(['DG_STATE_CLOSED']);
});

it('counts from the newest entry, not from a clock set ahead: the history stays, and it says so', () => {
  // devgated started with the clock years ahead (a dead RTC battery, a bad NTP answer) must not
  // take every entry for one older than keepDays.
  append('day 0');
  tick(40 * DAY);
  append('day 40');
  tick(2 * 365 * DAY);
  const warnings: unknown[] = [];
  const retention = new AuditRetention(store, {
    keepDays: 30,
    now: () => clock,
    pruned: () => undefined,
    failed: (error) => {
      throw error;
    },
    warn: (fields, message) => warnings.push([message, fields]),
  });
  retention.start();
  retention.dispose();
  expect(reasons()).toEqual(['day 40', '1 audit entry older than 30 days pruned']);
  expect(store.audit.query({ order: 'desc', limit: 1 })[0].details).toMatchObject({
    before: '2026-12-07T10:00:00.000Z',
  });
  expect(warnings).toEqual([
    [
      'the clock is more than keepDays past the newest audit entry: retention counts from that entry',
      { newest: '2027-01-06T10:00:00.000Z', now: '2029-01-05T10:00:00.000Z', keepDays: 30 },
    ],
  ]);
});

it('says nothing of the clock on a host quiet for less than keepDays (no entry for weeks is no wrong clock)', () => {
  append('day 0');
  tick(29 * DAY);
  const warnings: unknown[] = [];
  const retention = new AuditRetention(store, {
    keepDays: 30,
    now: () => clock,
    pruned: () => undefined,
    failed: () => undefined,
    warn: (fields, message) => warnings.push([message, fields]),
  });
  retention.start();
  retention.dispose();
  expect(warnings).toEqual([]);
});

it('logs a callback that throws on its timer, rather than letting it end the process', async () => {
  append('day 0');
  tick(40 * DAY);
  append('day 40');
  const warnings: string[] = [];
  let reported = 0;
  const retention = new AuditRetention(store, {
    keepDays: 30,
    now: () => clock,
    // The first report goes through; the next one throws, on the timer.
    pruned: () => {
      if (++reported > 1) throw new Error('a subscriber broke');
    },
    failed: () => undefined,
    warn: (fields, message) => warnings.push(`${message}: ${(fields as { err: Error }).err.message}`),
  });
  // Uncaught on a timer, the throw would fail this test (jest reports it) and end devgated.
  retention.start(20);
  try {
    expect(warnings).toEqual([]);
    tick(40 * DAY);
    append('day 80');
    await waitFor('the next pruning', () => warnings.length > 0);
    expect(warnings).toEqual(['audit retention: a callback failed: a subscriber broke']);
    expect(reasons()).toEqual(['day 80', '2 audit entries older than 30 days pruned']);
  } finally {
    retention.dispose();
  }
});
