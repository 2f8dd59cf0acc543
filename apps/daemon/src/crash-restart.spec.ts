/**
 * devgated SIGKILLed under load and restarted, several times. A client sends 2,000 state-changing
 * requests, 8 at a time: assignments of distinct fake ports (port assignments need no device),
 * removals of some of them, and attaches and detaches of a real loop device to two real QEMU VMs.
 * At seeded random moments the daemon (its whole process group) is SIGKILLed; what QEMU has is read
 * directly while it is down, and the restarted daemon must report exactly that.
 *
 * At the end: every acknowledged write is there (acknowledged assignments not later removed exist,
 * acknowledged removals are gone), every acknowledged request has its own audit record (each sends
 * its own X-Devgate-Actor), the assignments and the audit log agree even for requests the kill cut
 * off, no journal entry is left pending, SQLite's integrity check passes, QEMU holds no block node
 * that devgate lost track of, and the loop device can still be attached to each VM.
 *
 * A second, deterministic test puts QEMU in the state a devgated killed in the middle of a detach
 * leaves (`device_del` sent, the block node not yet deleted) and checks that it wedges nothing.
 */
import path from 'node:path';
import { QemuConnector } from '@devgate/backend-qemu';
import { type LoopDisk, createLoopDisk } from '@devgate/testkit';
import { SqliteStateStore } from './store/state-store.js';
import {
  type Attached,
  ApiClient,
  DaemonProcess,
  cleanupHarness,
  daemonAttachments,
  harnessConfig,
  makeTempDir,
  mulberry32,
  qemuBlockState,
  sleep,
  startLab,
  stopDaemons,
  until,
} from './testing/daemon-harness.js';
import { type DaemonConfig } from './config.js';

jest.setTimeout(90_000);

const SEED = Number(process.env.DEVGATE_CRASH_SEED ?? 7_919);
const TOTAL = 2_000;
const KILLS = 6;
const IN_FLIGHT = 8;
const VMS = ['work', 'other'];
/** For the deterministic test only, with its own loop disk: nothing it leaves can disturb the other. */
const SPARE = 'spare';

type Op =
  | { readonly kind: 'assign' | 'unassign'; readonly port: string; readonly frontend: string }
  | { readonly kind: 'attach' | 'detach'; readonly frontend: string };

interface Result {
  /** The HTTP status, when an answer came back. */
  readonly status?: number;
  readonly code?: string;
  /** The connection failed: the request may or may not have taken effect. */
  readonly lost?: string;
}

let dir: string;
let registryFile: string;
let disk: LoopDisk;
let spareDisk: LoopDisk;

beforeAll(async () => {
  dir = makeTempDir('devgated-crash-');
  registryFile = (await startLab(dir, [...VMS, SPARE])).registryFile;
  disk = createLoopDisk({ sizeMiB: 8 });
  spareDisk = createLoopDisk({ sizeMiB: 8 });
});

afterEach(() => stopDaemons());
afterAll(() => cleanupHarness());

/** The requests, decided up front from the seed. */
function plan(random: () => number): Op[] {
  const ops: Op[] = [];
  const assigned: { port: string; frontend: string }[] = [];
  for (let i = 0; i < TOTAL; i++) {
    const roll = random();
    const frontend = VMS[Math.floor(random() * VMS.length)];
    if (roll < 0.03) ops.push({ kind: random() < 0.5 ? 'attach' : 'detach', frontend });
    else if (roll < 0.13 && assigned.length > 0) {
      const [victim] = assigned.splice(Math.floor(random() * assigned.length), 1);
      ops.push({ kind: 'unassign', ...victim });
    } else {
      const port = `dom0:fake${i}`;
      assigned.push({ port, frontend });
      ops.push({ kind: 'assign', port, frontend });
    }
  }
  return ops;
}

function body(op: Op, device: string): Record<string, string> {
  switch (op.kind) {
    case 'assign':
      return { class: 'block', frontend: op.frontend, device: op.port, only: 'port', mode: 'auto-attach' };
    case 'unassign':
      return { class: 'block', frontend: op.frontend, device: op.port, only: 'port' };
    default:
      return { class: 'block', frontend: op.frontend, device };
  }
}

it('wedges nothing when killed while a detach waits for QEMU', async () => {
  const config = harnessConfig(makeTempDir('devgated-crash-detach-'), {
    backends: { dom0: { source: 'local' } },
    domains: registryFile,
  });
  const client = new ApiClient(config.socket);
  const device = `dom0:${spareDisk.name}`;
  let daemon = await DaemonProcess.start(config);
  expect((await client.post('/v1/attach', { class: 'block', frontend: SPARE, device })).status).toBe(200);
  await daemon.kill();

  // What devgated leaves when it dies while waiting for DEVICE_DELETED (a guest may take seconds to
  // release a device): `device_del` sent, `blockdev-del` never. QEMU finishes the unplug by itself.
  const qemu = new QemuConnector({ registryFile });
  try {
    const peripherals = await qemu.execute<{ name: string }[]>(SPARE, 'qom-list', { path: '/machine/peripheral' });
    const ours = peripherals.filter((p) => p.name.startsWith('dg-'));
    expect(ours).toHaveLength(1);
    await qemu.execute(SPARE, 'device_del', { id: ours[0].name });
  } finally {
    qemu.dispose();
  }
  await until(
    'QEMU to finish the unplug',
    async () => (await qemuBlockState(registryFile, [SPARE])).attached.length === 0,
  );

  daemon = await DaemonProcess.start(config);
  expect((await daemonAttachments(client)).filter((a) => a.frontend === SPARE)).toEqual([]);
  const again = await client.post<{ error?: { code: string; message: string } }>('/v1/attach', {
    class: 'block',
    frontend: SPARE,
    device,
  });
  expect({ status: again.status, error: again.body.error }).toEqual({ status: 200, error: undefined });
  expect((await client.post('/v1/detach', { class: 'block', frontend: SPARE, device })).status).toBe(200);
  await daemon.stop();
  expect(await qemuBlockState(registryFile, [SPARE])).toEqual({ attached: [], orphans: [] });
});

const ROUTES = {
  assign: '/v1/assignments',
  unassign: '/v1/assignments/remove',
  attach: '/v1/attach',
  detach: '/v1/detach',
};

it(`keeps every acknowledged write and the truth about QEMU through ${KILLS + 1} SIGKILLs`, async () => {
  const random = mulberry32(SEED);
  const ops = plan(random);
  const device = `dom0:${disk.name}`;
  const config: DaemonConfig = harnessConfig(dir, { backends: { dom0: { source: 'local' } }, domains: registryFile });
  const client = new ApiClient(config.socket);

  let daemon = await DaemonProcess.start(config);
  const started = Date.now();
  const results: Result[] = new Array(TOTAL);
  const restarts: { at: number; truth: Attached[]; seen: Attached[]; orphans: string[]; signal: string | null }[] = [];

  // Requests wait at the gate while the daemon is down; those already past it are cut off.
  let gate: Promise<void> = Promise.resolve();
  const crashAndRestart = async (at: number) => {
    let open!: () => void;
    gate = new Promise((resolve) => (open = resolve));
    try {
      const exit = await daemon.kill();
      // An unplug the daemon asked for just before it died may still complete: wait until QEMU is still.
      let qemu = await qemuBlockState(registryFile, VMS);
      for (let settled = false, tries = 0; !settled && tries < 30; tries++) {
        await sleep(100);
        const again = await qemuBlockState(registryFile, VMS);
        settled = JSON.stringify(again) === JSON.stringify(qemu);
        qemu = again;
      }
      daemon = await DaemonProcess.start(config);
      restarts.push({ at, truth: qemu.attached, seen: await daemonAttachments(client), ...qemu, signal: exit.signal });
    } finally {
      open();
    }
  };

  const killPoints = new Set<number>();
  while (killPoints.size < KILLS) killPoints.add(100 + Math.floor(random() * (TOTAL - 200)));
  const killDelays = new Map([...killPoints].map((at) => [at, random() * 25]));
  let crashes: Promise<void> = Promise.resolve();
  let next = 0;

  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next < TOTAL) {
        const i = next++;
        if (killPoints.has(i)) {
          // Kill a moment later, with this request and others in flight.
          crashes = crashes.then(() => sleep(killDelays.get(i)!).then(() => crashAndRestart(i)));
        }
        await gate;
        const op = ops[i];
        try {
          const answer = await client.post<{ error?: { code: string } }>(ROUTES[op.kind], body(op, device), {
            headers: { 'x-devgate-actor': `op-${i}` },
          });
          results[i] = { status: answer.status, code: answer.body?.error?.code };
        } catch (error) {
          results[i] = { lost: (error as Error).message };
        }
      }
    }),
  );
  await crashes;
  // Once more at the end, so the final state is what a restarted daemon read back.
  await crashAndRestart(TOTAL);
  const elapsed = Date.now() - started;

  // After every kill, the restarted daemon reported exactly what QEMU had. A kill may leave a block
  // node behind (between blockdev-add and device_add, or device_del and blockdev-del); the restarted
  // daemon drops such orphans when it connects, which the final check below proves.
  expect(restarts).toHaveLength(KILLS + 1);
  for (const r of restarts) {
    expect(r.signal).toBe('SIGKILL');
    const seen = r.seen.filter((a) => VMS.includes(a.frontend));
    expect({ seed: SEED, killedAt: r.at, seen }).toEqual({ seed: SEED, killedAt: r.at, seen: r.truth });
    expect(r.truth.length).toBeLessThanOrEqual(1);
  }

  const acked = (i: number) => results[i].status !== undefined && results[i].status! < 300;
  const answered = results.filter((r) => r.status !== undefined);
  expect(answered.filter((r) => r.status! >= 500)).toEqual([]);
  const lost = results.filter((r) => r.lost !== undefined).length;
  expect(results.filter((_r, i) => acked(i)).length).toBeGreaterThan(TOTAL * 0.8);

  // The last state, read back from the restarted daemon's API and then from the file itself.
  const listed = (await client.get<{ assignments: { portId: string }[] }>('/v1/assignments')).body.assignments;
  const exit = await daemon.stop();
  expect(exit).toEqual({ code: 0, signal: null });
  expect((await qemuBlockState(registryFile, VMS)).orphans).toEqual([]);
  const store = new SqliteStateStore(path.join(config.stateDir, 'state.db'));
  try {
    expect(store.integrityCheck()).toEqual(['ok']);
    expect(store.journalPending()).toEqual([]);
    const present = new Set(store.listAssignments().map((a) => `${a.backend}:${a.portId}`));
    expect([...present].sort()).toEqual(listed.map((a) => `dom0:${a.portId}`).sort());
    const audit = store.queryAudit({ limit: 10_000 });
    const byActor = new Map<string, (typeof audit)[number][]>();
    for (const entry of audit) {
      const actor = /^(op-\d+) via /.exec(entry.actor)?.[1];
      if (actor) byActor.set(actor, [...(byActor.get(actor) ?? []), entry]);
    }

    const problems: string[] = [];
    const auditedOk = new Map<string, Set<string>>(); // port -> actions audited ok
    for (const entry of audit) {
      if (entry.outcome !== 'ok' || !entry.portId?.startsWith('fake')) continue;
      const port = `dom0:${entry.portId}`;
      auditedOk.set(port, new Set([...(auditedOk.get(port) ?? []), entry.action]));
    }
    ops.forEach((op, i) => {
      const result = results[i];
      const entries = byActor.get(`op-${i}`) ?? [];
      if (acked(i)) {
        // Every acknowledged request left its audit record.
        if (!entries.some((e) => e.action === op.kind && e.outcome === 'ok')) {
          problems.push(`op-${i} ${op.kind} acknowledged without its audit record`);
        }
      } else if (result.status !== undefined && (op.kind === 'attach' || op.kind === 'detach')) {
        // Refusals are decisions, audited with their code.
        if (!entries.some((e) => e.outcome !== 'ok' && e.code === result.code)) {
          problems.push(`op-${i} ${op.kind} refused (${result.code}) without an audit record`);
        }
      }
    });
    const removal = new Map(ops.flatMap((op, i) => (op.kind === 'unassign' ? [[op.port, i] as const] : [])));
    ops.forEach((op, i) => {
      if (op.kind !== 'assign') return;
      const removedAt = removal.get(op.port);
      const removalAcked = removedAt !== undefined && acked(removedAt);
      if (removalAcked && present.has(op.port)) problems.push(`${op.port}: removal acknowledged, still assigned`);
      if (acked(i) && removedAt === undefined && !present.has(op.port)) {
        problems.push(`${op.port}: assignment acknowledged, lost`);
      }
      // Even for requests cut off by a kill, the state and the audit log agree.
      const actions = auditedOk.get(op.port) ?? new Set();
      if (present.has(op.port) && !actions.has('assign')) problems.push(`${op.port}: assigned, never audited`);
      if (!present.has(op.port) && actions.has('assign') && !actions.has('unassign')) {
        problems.push(`${op.port}: audited as assigned, but not assigned and no removal audited`);
      }
      if (!present.has(op.port) && actions.has('unassign') && !actions.has('assign')) {
        problems.push(`${op.port}: removal audited, assignment never audited`);
      }
    });
    for (const port of present) if (!port.startsWith('dom0:fake')) problems.push(`unexpected assignment ${port}`);
    expect({ seed: SEED, problems }).toEqual({ seed: SEED, problems: [] });
  } finally {
    store.dispose();
  }

  // No VM was left wedged: the loop device still attaches to (and detaches from) each of them.
  daemon = await DaemonProcess.start(config);
  for (const vm of VMS) await client.post('/v1/detach', { class: 'block', frontend: vm });
  for (const vm of VMS) {
    const attached = await client.post<{ error?: { code: string; message: string } }>('/v1/attach', {
      class: 'block',
      frontend: vm,
      device,
    });
    expect({ vm, status: attached.status, error: attached.body.error }).toEqual({ vm, status: 200, error: undefined });
    expect((await client.post('/v1/detach', { class: 'block', frontend: vm, device })).status).toBe(200);
  }
  await daemon.stop();

  const counts = (kind: Op['kind']) => ops.filter((op) => op.kind === kind).length;
  process.stdout.write(
    `crash-restart: ${TOTAL} requests (${counts('assign')} assign, ${counts('unassign')} unassign, ` +
      `${counts('attach')} attach, ${counts('detach')} detach) in ${elapsed} ms, seed ${SEED}; ` +
      `${results.filter((_r, i) => acked(i)).length} acknowledged, ${lost} cut off by ${KILLS + 1} SIGKILLs at ` +
      `${restarts.map((r) => `${r.at}${r.truth.length ? `(${r.truth[0].frontend})` : ''}`).join(', ')}\n`,
  );
});
