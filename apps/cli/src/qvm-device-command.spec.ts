import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { labDown, labUp } from '@devgate/backend-qemu';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { runCaptured } from './test-io';
import { devgateBlockFiles } from './test-qemu';

// qvm-block detach and attach --persistent as Qubes 4.3's qvm-device (reference 1.3), without
// devgated: a real QEMU lab VM (paused, no guest OS) and a real loop disk.
jest.setTimeout(60_000);

const VM = 'dgfix-qvmdev';
let dir: string;
let registryFile: string;
let disk: LoopDisk;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-qvmdev-'));
  registryFile = path.join(dir, 'domains.json');
  process.env.DEVGATE_DOMAINS = registryFile;
  process.env.DEVGATE_SOCKET = path.join(dir, 'no-devgated.sock');
  await labUp([VM], { registryFile, stateDir: path.join(dir, 'lab') });
  disk = createLoopDisk({ sizeMiB: 24, partitions: [{ label: 'QVMDEV' }] });
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

describe('qvm-block detach', () => {
  it("refuses a device ID that is not the device in the port, in Qubes' words, and leaves it attached", async () => {
    const p1 = `dom0:${disk.partitions[0]}`;
    expect(await runCaptured('qvm-block', ['attach', VM, p1])).toMatchObject({ code: 0, err: '' });
    const info = await runCaptured('qvm-block', ['info', p1]);
    const deviceId = /^device ID: (.+)$/m.exec(info.out)![1];

    const wrong = await runCaptured('qvm-block', ['detach', VM, `${p1}:dead:beef::b000000`]);
    expect(wrong.code).toBe(1);
    expect(wrong.err).toBe(
      `qvm-block: error: ${p1}:dead:beef::b000000 is not attached.\n` +
        `qvm-block: hint: the device in ${p1} is ${deviceId}\n`,
    );
    expect(await qemuBlocks()).toEqual([`/dev/${disk.partitions[0]}`]);

    expect(await runCaptured('qvm-block', ['detach', VM, `${p1}:${deviceId}`])).toMatchObject({ code: 0, err: '' });
    expect(await qemuBlocks()).toEqual([]);
  });

  it("BACKEND:* detaches that backend's devices; one with none attached is not attached (exit 1)", async () => {
    const p1 = `dom0:${disk.partitions[0]}`;
    expect((await runCaptured('qvm-block', ['attach', VM, p1])).code).toBe(0);

    const none = await runCaptured('qvm-block', ['detach', VM, 'nosuch:*']);
    expect(none).toMatchObject({ code: 1, err: 'qvm-block: error: nosuch:* is not attached.\n' });
    expect(await qemuBlocks()).toEqual([`/dev/${disk.partitions[0]}`]);

    expect(await runCaptured('qvm-block', ['detach', VM, 'dom0:*'])).toMatchObject({ code: 0, err: '' });
    expect(await qemuBlocks()).toEqual([]);
  });
});

describe('qvm-block attach --persistent', () => {
  it('without devgated is refused before anything is attached', async () => {
    const p1 = `dom0:${disk.partitions[0]}`;
    const persistent = await runCaptured('qvm-block', ['attach', '-p', VM, p1]);
    expect(await qemuBlocks()).toEqual([]);
    expect(persistent.code).toBe(1);
    expect(persistent.err).toContain(
      'devgated is not reachable at ' +
        `${process.env.DEVGATE_SOCKET}: attach --persistent, which assigns the device, needs devgated`,
    );
    expect((await runCaptured('qvm-block', ['list'])).out).not.toContain('attached');
  });
});
