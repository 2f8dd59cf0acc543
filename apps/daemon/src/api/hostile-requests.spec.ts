/**
 * devgated under 10,000 malformed and hostile requests on both sockets (testing/hostile-http.ts:
 * bad and truncated JSON, wrong types, missing and extra fields, bodies over 64 KiB, deep nesting,
 * unknown routes, path tricks, NUL and control bytes, unicode, wrong methods and content types, bad
 * query strings, absurd headers, half-closed and abandoned connections, bytes that are not HTTP),
 * generated from a fixed seed and sent 32 at a time over raw Unix-socket connections.
 *
 * Asserted: the daemon never crashes (both sockets answer /v1/health after every batch of 500, its
 * memory and open descriptors stay bounded); every response that comes back is a 4xx with the API's
 * error shape `{error: {code: "DG_…", message}}` (never a 2xx, never a 5xx, never a stack trace or
 * a framework's own error body); and nothing in the state changed: the SQLite file holds exactly
 * the rows it held before (assignments, deny lists, remembered answers, audit log, journal), and
 * the audit log's new rows are refusals only. The corpus covers every route, deny lists and
 * forgetting remembered answers included.
 */
import path from 'node:path';
import Database from 'better-sqlite3';
import {
  ApiClient,
  DaemonProcess,
  type RawExchange,
  type RawResponse,
  cleanupHarness,
  harnessConfig,
  registerVms,
  inParallel,
  makeTempDir,
  parseResponses,
  rawExchange,
  request,
  until,
} from '../testing/daemon-harness.js';
import { type HostileCase, hostileCorpus } from '../testing/hostile-http.js';

const SEED = Number(process.env.DEVGATE_HOSTILE_SEED ?? 20_261_127);
const COUNT = 10_000;
const BATCH = 500;
const IN_FLIGHT = 32;
const ANSWER_TIMEOUT_MS = 5_000;

jest.setTimeout(60_000);

let daemon: DaemonProcess;
let client: ApiClient;
let stateFile: string;

beforeAll(async () => {
  const config = harnessConfig(makeTempDir('devgated-hostile-'));
  // The seed assignments' VM; the corpus's requests name 'work', which devgated does not know.
  registerVms(config, ['vault']);
  daemon = await DaemonProcess.start(config);
  client = new ApiClient(config.socket);
  stateFile = path.join(config.stateDir, 'state.db');
});

afterAll(() => cleanupHarness());

/** Every row of every table, read straight from the file (WAL: readers do not disturb devgated). */
function stateRows(): Record<string, unknown[]> {
  const db = new Database(stateFile, { readonly: true, fileMustExist: true });
  try {
    const tables = ['assignments', 'deny_list', 'policy_answers', 'devices_seen', 'audit_log', 'attachment_journal'];
    // Some tables are WITHOUT ROWID: order the rows here, by their whole content.
    const rows = (table: string) =>
      db
        .prepare(`SELECT * FROM ${table}`)
        .all()
        .map((row) => JSON.stringify(row))
        .sort();
    return Object.fromEntries(tables.map((t) => [t, rows(t)]));
  } finally {
    db.close();
  }
}

function rememberAnswer(frontend: string, backend: string, devclass: string, deviceId: string): void {
  const db = new Database(stateFile, { fileMustExist: true, timeout: 5_000 });
  try {
    db.prepare(
      `INSERT INTO policy_answers (devclass, backend, port_id, device_id, frontend, verdict, created_at)
       VALUES (?, ?, '*', ?, ?, 'allow', ?)`,
    ).run(devclass, backend, deviceId, frontend, new Date().toISOString());
  } finally {
    db.close();
  }
}

function isErrorBody(value: unknown): boolean {
  if (typeof value !== 'object' || value === null || Object.keys(value).join() !== 'error') return false;
  const error = (value as { error: unknown }).error as { code?: unknown; message?: unknown } | null;
  return (
    typeof error === 'object' &&
    error !== null &&
    typeof error.code === 'string' &&
    /^DG_[A-Z0-9_]+$/.test(error.code) &&
    typeof error.message === 'string' &&
    error.message.length > 0
  );
}

/** What is wrong with the daemon's side of one exchange, if anything. */
function problemWith(c: HostileCase, exchange: RawExchange, tally: Record<string, number>): string | undefined {
  const abandoned = c.abandonAfterMs !== undefined;
  if (exchange.outcome === 'timeout' && !abandoned) return `neither answered nor closed within ${ANSWER_TIMEOUT_MS} ms`;
  let responses: RawResponse[];
  try {
    responses = parseResponses(exchange.received, { head: c.head });
  } catch (error) {
    // We may have cut an answer short ourselves.
    if (abandoned) return undefined;
    return `unparsable answer (${(error as Error).message}): ${JSON.stringify(exchange.received.toString('latin1').slice(0, 300))}`;
  }
  if (responses.length === 0) {
    tally[exchange.outcome === 'error' ? 'reset without an answer' : 'closed without an answer']++;
    // A connection reset while we were still writing (the daemon refused early) can lose the answer.
    if (c.expectResponse && exchange.outcome !== 'error') return `closed without an answer`;
  }
  for (const response of responses) {
    tally.responses++;
    tally[`status ${response.status}`] = (tally[`status ${response.status}`] ?? 0) + 1;
    const text = response.body.toString('utf8');
    if (response.status < 400 || response.status > 499) return `status ${response.status}: ${text.slice(0, 300)}`;
    if (c.head) continue;
    if (!/^application\/json\b/.test(response.headers['content-type'] ?? '')) {
      return `content-type ${response.headers['content-type']}: ${text.slice(0, 300)}`;
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return `not JSON: ${text.slice(0, 300)}`;
    }
    if (!isErrorBody(body)) return `not {error: {code: DG_…, message}}: ${text.slice(0, 300)}`;
  }
  return undefined;
}

it(`answers ${COUNT} hostile requests with coded 4xx errors, never crashes, and changes no state`, async () => {
  const started = Date.now();
  // Some state for a hostile request to damage: assignments, and a refused attach (audited; refused
  // for its unknown VM before anything is journaled).
  for (const port of ['dom0:seed1', 'dom0:seed2', 'dom0:seed3']) {
    const made = await client.post('/v1/assignments', {
      class: 'block',
      frontend: 'vault',
      device: port,
      only: 'port',
    });
    expect(made.status).toBe(200);
  }
  expect((await client.post('/v1/attach', { class: 'block', frontend: 'work', device: 'dom0:seed1' })).status).toBe(
    404,
  );
  // A deny list, and a remembered answer (written beside devgated: the API only forgets them).
  expect((await client.post('/v1/deny/work/add', { patterns: ['u03****', 'b******'] })).status).toBe(200);
  rememberAnswer('work', 'dom0', 'usb', '1d6b:0002::u090000');
  const before = stateRows();
  expect(before.assignments).toHaveLength(3);
  expect(before.deny_list).toHaveLength(2);
  expect(before.policy_answers).toHaveLength(1);
  expect(before.audit_log).toHaveLength(5);
  expect(before.attachment_journal).toHaveLength(0);

  const cases = hostileCorpus(SEED, COUNT);
  const sockets = { read: client.socket, rw: client.rwSocket };
  const tally: Record<string, number> = { responses: 0, 'closed without an answer': 0, 'reset without an answer': 0 };
  const perCategory: Record<string, number> = {};
  const failures: string[] = [];
  const baseline = { rss: daemon.rssKiB()!, fds: daemon.openFds()! };
  let peakRss = baseline.rss;

  for (let from = 0; from < cases.length; from += BATCH) {
    await inParallel(cases.slice(from, from + BATCH), IN_FLIGHT, async (c) => {
      perCategory[c.category] = (perCategory[c.category] ?? 0) + 1;
      const exchange = await rawExchange(sockets[c.socket], [c.bytes], {
        timeoutMs: ANSWER_TIMEOUT_MS,
        abandonAfterMs: c.abandonAfterMs,
      });
      const problem = problemWith(c, exchange, tally);
      if (problem && failures.length < 25)
        failures.push(`#${c.index} [${c.category}] ${c.label} on ${c.socket}: ${problem}`);
    });
    const where = `after request ${from + BATCH} (seed ${SEED})`;
    if (!daemon.running) throw new Error(`devgated died ${where}:\n${daemon.log()}`);
    for (const socket of [sockets.read, sockets.rw]) {
      const health = await request(socket, 'GET', '/v1/health', undefined, { timeoutMs: 5_000 }).catch((e: Error) => e);
      if (!('status' in health) || health.status !== 200)
        throw new Error(`no health on ${socket} ${where}: ${String(health)}`);
    }
    peakRss = Math.max(peakRss, daemon.rssKiB() ?? 0);
  }
  const elapsed = Date.now() - started;

  expect({ seed: SEED, failures }).toEqual({ seed: SEED, failures: [] });
  // Every exchange ended; most were answered (not-HTTP bytes and cut-off requests may just be closed).
  expect(tally.responses).toBeGreaterThan(COUNT * 0.8);
  expect(Object.keys(perCategory).length).toBeGreaterThanOrEqual(20);

  // No connection is left behind, and memory stays in proportion (it was ~130 MiB at start).
  await until('devgated to close every hostile connection', () => (daemon.openFds() ?? 0) <= baseline.fds + 4, 5_000);
  const finalRss = daemon.rssKiB()!;
  expect(peakRss).toBeLessThan(512 * 1024);
  expect(finalRss - baseline.rss).toBeLessThan(128 * 1024);

  // Nothing changed: not one row, in any table; the audit log only gained its refusals (every
  // decision is audited, a refused one too, with what it held made printable).
  const afterHostile = stateRows();
  const refusals = afterHostile.audit_log.filter((row) => !before.audit_log.includes(row));
  const kept = afterHostile.audit_log.filter((row) => before.audit_log.includes(row));
  expect({ ...afterHostile, audit_log: kept }).toEqual(before);
  const outcomes = new Set(refusals.map((row) => (JSON.parse(String(row)) as { outcome: string }).outcome));
  expect([...outcomes].filter((outcome) => outcome !== 'denied')).toEqual([]);

  // The state check can see a change: a valid request still works, and shows.
  const control = await client.post('/v1/assignments', {
    class: 'block',
    frontend: 'vault',
    device: 'dom0:after',
    only: 'port',
  });
  expect(control.status).toBe(200);
  const after = stateRows();
  expect(after.assignments).toHaveLength(4);
  expect(after.audit_log).toHaveLength(afterHostile.audit_log.length + 1);

  process.stdout.write(
    `hostile-requests: ${COUNT} cases (seed ${SEED}) in ${elapsed} ms; ${JSON.stringify(tally)}; ` +
      `per category ${JSON.stringify(perCategory)}; rss ${baseline.rss}→${finalRss} KiB (peak ${peakRss}); fds ${baseline.fds}\n`,
  );
});
