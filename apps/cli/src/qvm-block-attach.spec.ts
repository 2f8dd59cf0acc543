import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { QemuConnector, type QemuBlockInfo, labDown, labUp } from '@devgate/backend-qemu';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks, recordedFixture } from '@devgate/testkit';
import { runCaptured } from './test-io';

// The seed's scenario against real QEMU VMs (paused, no guest OS) and real loop devices.
jest.setTimeout(60_000);

let dir: string;
let registryFile: string;
let disk: LoopDisk;
let roDisk: LoopDisk;
const pids: number[] = [];

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-cli-'));
  registryFile = path.join(dir, 'domains.json');
  process.env.DEVGATE_DOMAINS = registryFile;
  const started = await labUp(['work', 'personal'], { registryFile, stateDir: path.join(dir, 'lab') });
  pids.push(...started.map((d) => d.pid));
  disk = createLoopDisk({ sizeMiB: 48, partitions: [{ sizeMiB: 20, label: 'STICK' }, {}] });
  roDisk = createLoopDisk({ sizeMiB: 8, readOnly: true });
});

afterAll(async () => {
  await labDown(undefined, { registryFile }).catch(() => undefined);
  for (const pid of pids) killQuietly(pid);
  disposeAllLoopDisks();
  delete process.env.DEVGATE_DOMAINS;
  fs.rmSync(dir, { recursive: true, force: true });
});

function killQuietly(pid: number) {
  try {
    if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system')) process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** What QEMU itself says is attached: devgate's block nodes. QMP serves one client, so close after. */
async function qemuBlocks(vm: string): Promise<{ file: string; ro: boolean }[]> {
  const connector = new QemuConnector({ registryFile });
  try {
    return (await connector.queryBlock(vm))
      .filter((b: QemuBlockInfo) => b.inserted?.['node-name']?.startsWith('dg-'))
      .map((b) => ({ file: b.inserted!.file, ro: b.inserted!.ro }));
  } finally {
    connector.dispose();
  }
}

const line = (out: string, port: string) => out.split('\n').find((l) => l.startsWith(`dom0:${port} `));

describe('qvm-block attach and detach (real QEMU)', () => {
  it('attaches a partition (old flag form), shows it in QEMU and in both listings, detaches it', async () => {
    const p1 = disk.partitions[0];
    expect(await runCaptured('qvm-block', ['-a', 'work', `dom0:${p1}`])).toMatchObject({ code: 0, err: '' });
    expect(await qemuBlocks('work')).toEqual([{ file: `/dev/${p1}`, ro: false }]);

    // A fresh command reads the attachment back from QEMU: nothing is remembered elsewhere.
    const legacy = await runCaptured('qvm-block', ['-l']);
    expect(line(legacy.out, p1)).toMatch(/\(STICK\) 20 MiB \(attached to 'work' as 'xvdi'\)$/);
    const modern = await runCaptured('qvm-block', ['list']);
    expect(line(modern.out, p1)).toMatch(/ {2}work \(attached: read-only=no, frontend-dev=xvdi\)$/);
    // The whole disk is listed too, but cannot be attached (next test).
    expect(await runCaptured('qvm-block', ['list', 'work'])).toMatchObject({ code: 0 });

    expect(await runCaptured('qvm-block', ['-d', 'work', `dom0:${p1}`])).toMatchObject({ code: 0, err: '' });
    expect(await qemuBlocks('work')).toEqual([]);
    expect(line((await runCaptured('qvm-block', ['-l'])).out, p1)).not.toContain('attached');
  });

  it('leaves attachments alone when what it lists is not this host read live (a recording, a --sysroot tree, another backend name)', async () => {
    const p1 = disk.partitions[0];
    expect((await runCaptured('qvm-block', ['attach', 'work', `dom0:${p1}`])).code).toBe(0);
    const empty = path.join(dir, 'empty-root');
    fs.mkdirSync(path.join(empty, 'sys/devices'), { recursive: true });
    for (const view of [
      ['--recording', recordedFixture('HP_DVDRW_WITH_ISO9660_DISC.txt')],
      ['--sysroot', empty],
      ['--backend', 'elsewhere'],
    ]) {
      expect(await runCaptured('devgate', ['list', '--class', 'block', ...view])).toMatchObject({ code: 0, err: '' });
      expect(await qemuBlocks('work')).toEqual([{ file: `/dev/${p1}`, ro: false }]);
    }
    expect(line((await runCaptured('qvm-block', ['-l'])).out, p1)).toMatch(/\(attached to 'work' as 'xvdi'\)$/);
    expect((await runCaptured('qvm-block', ['detach', 'work', `dom0:${p1}`])).code).toBe(0);
  });

  it('refuses a whole disk while its partition is attached, and the reverse, changing nothing', async () => {
    const p1 = disk.partitions[0];
    expect((await runCaptured('qvm-block', ['attach', 'work', `dom0:${p1}`])).code).toBe(0);
    const whole = await runCaptured('qvm-block', ['attach', 'personal', `dom0:${disk.name}`]);
    expect(whole.code).toBe(1);
    expect(whole.err).toContain(`Device dom0:${disk.name} overlaps dom0:${p1}, which is attached to work`);
    expect(await qemuBlocks('personal')).toEqual([]);
    // The sibling partition is its own resource.
    expect((await runCaptured('qvm-block', ['attach', 'personal', `dom0:${disk.partitions[1]}`])).code).toBe(0);
    expect((await runCaptured('qvm-block', ['detach', 'personal'])).code).toBe(0);
    expect((await runCaptured('qvm-block', ['detach', 'work', `dom0:${p1}`])).code).toBe(0);

    expect((await runCaptured('devgate', ['attach', 'work', `dom0:${disk.name}`])).code).toBe(0);
    const part = await runCaptured('qvm-block', ['attach', 'personal', `dom0:${p1}`]);
    expect(part.code).toBe(1);
    expect(part.err).toContain('overlaps');
    expect(await qemuBlocks('personal')).toEqual([]);
    expect(await qemuBlocks('work')).toEqual([{ file: disk.device, ro: false }]);
    expect((await runCaptured('devgate', ['detach', 'work'])).code).toBe(0);
  });

  it('refuses the same device to a second VM; of two concurrent attaches exactly one wins', async () => {
    const p2 = `dom0:${disk.partitions[1]}`;
    const results = await Promise.all([
      runCaptured('qvm-block', ['attach', 'work', p2]),
      runCaptured('qvm-block', ['attach', 'personal', p2]),
    ]);
    expect(results.map((r) => r.code).sort()).toEqual([0, 1]);
    expect(results.find((r) => r.code === 1)!.err).toMatch(/already attached to (work|personal)/);
    const holders = [...(await qemuBlocks('work')), ...(await qemuBlocks('personal'))];
    expect(holders).toHaveLength(1);
    const winner = results[0].code === 0 ? 'work' : 'personal';
    const again = await runCaptured('qvm-block', ['attach', winner === 'work' ? 'personal' : 'work', p2]);
    expect(again.err).toContain(`Device ${p2} already attached to ${winner}`);
    expect((await runCaptured('qvm-block', ['detach', winner, p2])).code).toBe(0);
  });

  it('attaches a read-only loop device only read-only', async () => {
    const ro = `dom0:${roDisk.name}`;
    const rw = await runCaptured('qvm-block', ['attach', '-o', 'read-only=no', 'work', ro]);
    expect(rw.code).toBe(1);
    expect(rw.err).toContain('This device can be attached only read-only');
    expect(await qemuBlocks('work')).toEqual([]);
    expect((await runCaptured('qvm-block', ['attach', '--ro', 'work', ro])).code).toBe(0);
    expect(await qemuBlocks('work')).toEqual([{ file: roDisk.device, ro: true }]);
    expect((await runCaptured('qvm-block', ['-d', ro])).code).toBe(0);
  });

  it('names unknown VMs and devices, and a detach of something not attached', async () => {
    const vm = await runCaptured('qvm-block', ['attach', 'nosuchvm', `dom0:${disk.name}`]);
    expect(vm).toMatchObject({ code: 2 }); // Qubes: a usage error
    expect(vm.err).toContain("no such domain: 'nosuchvm'");
    const dev = await runCaptured('qvm-block', ['attach', 'work', 'dom0:sdz9']);
    expect(dev.err).toContain("backend vm dom0 doesn't expose block device 'sdz9'");
    const not = await runCaptured('qvm-block', ['detach', 'work', `dom0:${disk.name}`]);
    expect(not.code).toBe(1);
    expect(not.err).toContain(`device dom0:${disk.name} not attached to work`);
  });

  it('reports a VM killed during an attach clearly, and records nothing', async () => {
    const [doomed] = await labUp(['doomed'], { registryFile, stateDir: path.join(dir, 'lab') });
    pids.push(doomed.pid);
    process.kill(doomed.pid, 'SIGSTOP'); // the attach will hang on QMP until...
    const attaching = runCaptured('qvm-block', ['attach', 'doomed', `dom0:${disk.partitions[0]}`]);
    await new Promise((r) => setTimeout(r, 300));
    process.kill(doomed.pid, 'SIGKILL'); // ...QEMU dies under it
    const result = await attaching;
    expect(result.code).toBe(1);
    expect(result.err).toMatch(/doomed/);
    expect(result.err).not.toMatch(/internal error/);
    // devgate goes on, and shows nothing attached.
    const listed = await runCaptured('qvm-block', ['list']);
    expect(listed.code).toBe(0);
    expect(listed.out).not.toContain('attached');
    await labDown(['doomed'], { registryFile });
  });
});
