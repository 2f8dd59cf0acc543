import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { labDown, labUp } from '@devgate/backend-qemu';
import { openStateStore } from '@devgate/service';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { runCaptured } from './test-io';

// Without devgated, the CLI attaches through devgated's own service on devgated's state: the deny
// list applies and the audit gets the row devgated would write. Real QEMU, a real loop device.
jest.setTimeout(60_000);

let dir: string;
let registryFile: string;
let disk: LoopDisk;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-cli-state-'));
  registryFile = path.join(dir, 'domains.json');
  process.env.DEVGATE_DOMAINS = registryFile;
  // No daemon: point the CLI at a socket nobody listens on.
  process.env.DEVGATE_SOCKET = path.join(dir, 'no-devgated.sock');
  await labUp(['work'], { registryFile, stateDir: path.join(dir, 'lab') });
  disk = createLoopDisk({ sizeMiB: 24, partitions: [{ label: 'STICK' }] });
});

afterAll(async () => {
  await labDown(undefined, { registryFile }).catch(() => undefined);
  disposeAllLoopDisks();
  delete process.env.DEVGATE_DOMAINS;
  delete process.env.DEVGATE_SOCKET;
  fs.rmSync(dir, { recursive: true, force: true });
});

/** devgated's state, as devgated would open it (the directory jest.state-dir.cjs gave this file). */
function withState<T>(work: (store: ReturnType<typeof openStateStore>) => T): T {
  const store = openStateStore(process.env.DEVGATE_STATE_DIR!);
  try {
    return work(store);
  } finally {
    store.dispose();
  }
}

it('refuses an attach the deny list forbids, audits it as devgated would, and attaches once allowed', async () => {
  const partition = disk.partitions[0];
  withState((store) => store.denyLists.add('work', ['b******']));

  const refused = await runCaptured('qvm-block', ['-a', 'work', `dom0:${partition}`]);
  expect(refused.code).toBe(1);
  expect(refused.err).toContain("work's deny list");

  withState((store) => store.denyLists.remove('work', ['b******']));
  expect(await runCaptured('qvm-block', ['-a', 'work', `dom0:${partition}`])).toMatchObject({ code: 0, err: '' });
  expect(await runCaptured('qvm-block', ['-d', `dom0:${partition}`])).toMatchObject({ code: 0, err: '' });

  const rows = withState((store) => store.audit.query({ frontend: 'work' }));
  const target = { devclass: 'block', backend: 'dom0', portId: partition, frontend: 'work' };
  expect(rows).toEqual([
    expect.objectContaining({ ...target, action: 'attach', outcome: 'denied', code: 'DG_POLICY_DENIED' }),
    expect.objectContaining({ ...target, action: 'attach', outcome: 'ok', deviceId: expect.any(String) }),
    expect.objectContaining({ ...target, action: 'detach', outcome: 'ok' }),
  ]);
  for (const row of rows) expect(row.actor).toMatch(/\(in-process\)$/);
  // The attach and the detach were journaled, and each settled with its audit row.
  expect(withState((store) => store.journal.pending())).toEqual([]);
});

it('does not start a lab VM whose required device is absent, and starts it once the device is there', async () => {
  const required = (portId: string) => ({
    devclass: 'block',
    backend: 'dom0',
    portId,
    deviceId: '*',
    frontend: 'needy',
    mode: 'required' as const,
    options: {},
  });
  withState((store) => store.assignments.add(required('sdz9')));
  const refused = await runCaptured('devgate', ['lab', 'up', 'needy']);
  expect(refused.code).toBe(1);
  expect(refused.err).toContain('Domain needy requires device dom0:sdz9, which is not present');
  expect((await runCaptured('devgate', ['lab', 'list'])).out).not.toContain('needy');

  withState((store) => {
    store.assignments.remove(required('sdz9'));
    store.assignments.add(required(disk.partitions[0]));
  });
  expect(await runCaptured('devgate', ['lab', 'up', 'needy'])).toMatchObject({ code: 0, err: '' });
  expect((await runCaptured('devgate', ['lab', 'list'])).out).toMatch(/^needy +running/m);
});
