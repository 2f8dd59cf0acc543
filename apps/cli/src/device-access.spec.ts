import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { labDown, labUp } from '@devgate/backend-qemu';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks, leaveSocketsOfKilledProcess } from '@devgate/testkit';
import { quick } from './quick';
import { runCaptured } from './test-io';
import { devgateBlockFiles } from './test-qemu';

// A devgated that crashed outside systemd leaves its socket files, and nobody listens on them: the
// CLI works in-process as with no socket at all, and still says clearly what needs devgated. A real
// QEMU lab VM (paused, no guest OS) and a real loop disk.
const execFileAsync = promisify(execFile);
jest.setTimeout(60_000);

const VM = 'dgfix-stale';
let dir: string;
let registryFile: string;
let socket: string;
let disk: LoopDisk;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-stale-'));
  registryFile = path.join(dir, 'domains.json');
  socket = path.join(dir, 'devgate.sock');
  await leaveSocketsOfKilledProcess([socket, `${socket}.rw`]);
  process.env.DEVGATE_DOMAINS = registryFile;
  process.env.DEVGATE_SOCKET = socket;
  await labUp([VM], { registryFile, stateDir: path.join(dir, 'lab') });
  disk = createLoopDisk({ sizeMiB: 16, partitions: [{ label: 'STALE' }] });
});

afterAll(async () => {
  await labDown(undefined, { registryFile }).catch(() => undefined);
  disposeAllLoopDisks();
  delete process.env.DEVGATE_DOMAINS;
  delete process.env.DEVGATE_SOCKET;
  fs.rmSync(dir, { recursive: true, force: true });
});

// Whatever a failed test left attached does not leak into the next one.
afterEach(async () => {
  await runCaptured('qvm-block', ['detach', VM]);
});

const qemuBlocks = () => devgateBlockFiles(registryFile, VM);

const p1 = () => `dom0:${disk.partitions[0]}`;

describe('a socket nobody listens on', () => {
  it('lists, attaches and detaches in-process, and says so', async () => {
    // What the crash left: both socket files, nobody behind them.
    expect([socket, `${socket}.rw`].map((f) => fs.statSync(f).isSocket())).toEqual([true, true]);
    const listed = await runCaptured('qvm-block', ['list']);
    expect(listed).toMatchObject({ code: 0, err: '' });
    expect(listed.notices).toBe(`devgated is not running (${socket}); working in-process\n`);
    expect(listed.out).toContain(`${p1()} `);

    expect(await runCaptured('qvm-block', ['attach', VM, p1()])).toMatchObject({ code: 0, err: '' });
    expect(await qemuBlocks()).toEqual([`/dev/${disk.partitions[0]}`]);
    expect(await runCaptured('qvm-block', ['detach', VM, p1()])).toMatchObject({ code: 0, err: '' });
    expect(await qemuBlocks()).toEqual([]);
  });

  it('refuses what needs devgated with DG_DAEMON_UNAVAILABLE, changing nothing', async () => {
    const assign = await runCaptured('qvm-block', ['assign', VM, p1()]);
    expect(assign.code).toBe(1);
    expect(assign.err).toContain(`qvm-block: error: devgated is not reachable at ${socket}: this needs devgated`);
    const persistent = await runCaptured('qvm-block', ['attach', '-p', VM, p1()]);
    expect(persistent.code).toBe(1);
    expect(persistent.err).toContain(`devgated is not reachable at ${socket}: attach --persistent`);
    expect(await qemuBlocks()).toEqual([]);
  });

  it('makes the quick path hand a change to the whole CLI, which has sent nothing', async () => {
    // The whole CLI is asked for only to report an error devgated answered: there was none.
    const wholeCli = () => {
      throw new Error('asked the whole CLI to report an answer from devgated');
    };
    await expect(quick('qvm-block', ['attach', VM, p1()], wholeCli)).resolves.toBe(false);
    await expect(quick('qvm-block', ['list'], wholeCli)).resolves.toBe(false);
    expect(await qemuBlocks()).toEqual([]);
  });

  // The built launchers, as users run them: the quick path (dist/bundle/quick.js), then the bundle.
  const bin = (name: string, args: readonly string[]) =>
    execFileAsync(process.execPath, [path.join(__dirname, '..', 'bin', `${name}.cjs`), ...args], {
      env: process.env,
    }).then(
      (r) => ({ code: 0, out: r.stdout, err: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout, err: e.stderr }),
    );

  it('leaves the launchers working: qvm-block list, attach and detach exit 0', async () => {
    const listed = await bin('qvm-block', ['list']);
    expect(listed).toMatchObject({ code: 0, err: '' });
    expect(listed.out).toContain(`${p1()} `);
    expect(await bin('qvm-block', ['attach', VM, p1()])).toEqual({ code: 0, out: '', err: '' });
    expect(await qemuBlocks()).toEqual([`/dev/${disk.partitions[0]}`]);
    expect(await bin('qvm-block', ['detach', VM, p1()])).toEqual({ code: 0, out: '', err: '' });
    expect(await qemuBlocks()).toEqual([]);
  });
});
