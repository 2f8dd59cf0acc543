/**
 * Concurrent attaches through the API: 100 requests at once to attach one real loop device to ten
 * real QEMU VMs (paused, no guest). Exactly one may win; the 99 others get coded 409s; what devgated
 * reports, what QEMU has, the audit log and the journal must all agree, and a restarted devgated
 * must read the same attachment back from QEMU.
 */
import { type QemuConnector } from '@devgate/backend-qemu';
import { type LoopDisk, createLoopDisk } from '@devgate/testkit';
import { type Devgated } from './devgated.js';
import {
  ApiClient,
  cleanupHarness,
  daemonAttachments,
  harnessConfig,
  makeTempDir,
  qemuAttachments,
  qemuAttachmentsVia,
  startInProcess,
  startLab,
} from './testing/daemon-harness.js';

jest.setTimeout(90_000);

const VMS = Array.from({ length: 10 }, (_, i) => `vm${i}`);
const REQUESTS = 100;
const LOSING_CODES = ['DG_ALREADY_ATTACHED', 'DG_ATTACH_IN_PROGRESS', 'DG_OVERLAP'];

let dir: string;
let registryFile: string;
let disk: LoopDisk;
let daemon: Devgated | undefined;

beforeAll(async () => {
  dir = makeTempDir('devgated-race-');
  registryFile = (await startLab(dir, VMS)).registryFile;
  disk = createLoopDisk({ sizeMiB: 8 });
});

// Daemons, then the VMs, then the loop disk, then the temp directory, even after a failure.
afterAll(() => cleanupHarness());

interface ErrorBody {
  error: { code: string; message: string };
}

it(`lets exactly one of ${REQUESTS} concurrent attaches of one device win, and QEMU agrees`, async () => {
  // The real host's devices (backend dom0 reads /sys), so the loop device is there as it is.
  const config = harnessConfig(dir, { backends: { dom0: { source: 'local' } }, domains: registryFile });
  daemon = await startInProcess(config);
  const client = new ApiClient(config.socket);
  const device = `dom0:${disk.name}`;
  const file = `/dev/${disk.name}`;

  const started = Date.now();
  const answers = await Promise.all(
    Array.from({ length: REQUESTS }, (_, i) =>
      client.post<ErrorBody>(
        '/v1/attach',
        { class: 'block', frontend: VMS[i % VMS.length], device },
        { headers: { 'x-devgate-actor': `racer-${i}` } },
      ),
    ),
  );
  const elapsed = Date.now() - started;

  const winners = answers.flatMap((a, i) => (a.status === 200 ? [i] : []));
  expect(winners).toHaveLength(1);
  const winner = VMS[winners[0] % VMS.length];
  const losers = answers.filter((a) => a.status !== 200);
  const codes: Record<string, number> = {};
  for (const loser of losers) {
    expect(loser.status).toBe(409);
    expect(LOSING_CODES).toContain(loser.body.error.code);
    codes[loser.body.error.code] = (codes[loser.body.error.code] ?? 0) + 1;
  }
  expect(losers).toHaveLength(REQUESTS - 1);

  // devgated, QEMU (through devgated's own QMP connections) and the connector's read-back agree.
  const expected = [{ frontend: winner, file }];
  expect((await daemonAttachments(client)).filter((a) => a.file === file)).toEqual(expected);
  const connector = daemon.manager.connectors[0] as QemuConnector;
  expect(await qemuAttachmentsVia(connector, VMS)).toEqual(expected);
  expect((await connector.attachments()).map((a) => [a.frontend, a.port.portId])).toEqual([[winner, disk.name]]);

  // Every request was audited, each with its own actor: one ok, 99 denied with the code it got.
  type Entry = { actor: string; outcome: string; code?: string; frontend: string };
  const audit = (await client.get<{ entries: Entry[] }>('/v1/audit?action=attach&limit=1000')).body.entries;
  expect(audit).toHaveLength(REQUESTS);
  const byActor = new Map(audit.map((e) => [e.actor.replace(/ via .*$/, ''), e]));
  answers.forEach((answer, i) => {
    const entry = byActor.get(`racer-${i}`);
    expect(entry).toMatchObject({
      frontend: VMS[i % VMS.length],
      outcome: answer.status === 200 ? 'ok' : 'denied',
      ...(answer.status === 200 ? {} : { code: answer.body.error.code }),
    });
  });
  // The journal: every intent settled, none pending.
  expect(daemon.store.journal.pending()).toEqual([]);

  // Restarted, devgated reads the attachment back from QEMU; QEMU, asked directly, says the same.
  await daemon.stop();
  expect(await qemuAttachments(registryFile, VMS)).toEqual(expected);
  daemon = await startInProcess(config);
  expect((await daemonAttachments(client)).filter((a) => a.file === file)).toEqual(expected);

  const detached = await client.post('/v1/detach', { class: 'block', frontend: winner, device });
  expect(detached.status).toBe(200);
  expect(await qemuAttachmentsVia(daemon.manager.connectors[0] as QemuConnector, VMS)).toEqual([]);
  process.stdout.write(
    `concurrency: ${REQUESTS} attaches to ${VMS.length} VMs in ${elapsed} ms; winner ${winner}; losers ${JSON.stringify(codes)}\n`,
  );
});
