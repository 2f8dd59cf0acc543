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
  const retention = new AuditRetention(store, {
    keepDays: 30,
    now: () => clock,
    pruned: (entry) => pruned.push(entry),
    failed: (error) => {
      throw error;
    },
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
  });
  retention.start();
  expect(pruned).toEqual([]);
  expect(reasons()).toEqual(['day 0']);
  retention.dispose();
  store.dispose();
  new AuditRetention(store, {
    keepDays: 30,
    pruned: () => undefined,
    failed: (error) => failures.push(String(errorCode(error))),
  }).start();
  expect(failures).toEqual(['DG_STATE_CLOSED']);
});
