import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { runCaptured } from './test-io';

// The seed's block flow seen from inside a real guest: `devgate lab up --os work` boots a Linux
// guest as a lab VM, `qvm-block -a work dom0:loopNp1` attaches a real partition of this host, and the
// guest reads the file written on the host before attaching (all CLI commands run in-process).
jest.setTimeout(240_000);

let dir: string;
let registryFile: string;
let disk: LoopDisk;
let partition: string;

// Every command finds the registry through $DEVGATE_DOMAINS.
const devgate = (...argv: string[]) => runCaptured('devgate', argv);
/** `devgate lab exec work -- sh -c SCRIPT`. */
const inGuest = (script: string) => runCaptured('devgate', ['lab', 'exec', 'work', '--', 'sh', '-c', script]);

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-cli-guest-'));
  registryFile = path.join(dir, 'domains.json');
  process.env.DEVGATE_DOMAINS = registryFile;
  process.env.XDG_RUNTIME_DIR = path.join(dir, 'run'); // the lab's state directory goes there

  // A 20 MiB partition of a loop disk, holding an ext4 file system with one file in it.
  disk = createLoopDisk({ sizeMiB: 40, partitions: [{ sizeMiB: 20 }, {}] });
  partition = disk.partitions[0];
  const files = fs.mkdtempSync(path.join(dir, 'files-'));
  fs.writeFileSync(path.join(files, 'hello.txt'), 'written on the host\n');
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'SEEDSTICK', '-d', files, `/dev/${partition}`]);

  const up = await devgate('lab', 'up', '--os', 'work');
  expect(up).toMatchObject({ code: 0, err: '' });
  expect(up.out).toMatch(/^work +pid \d+ +\S+work\.qmp +(tcg|kvm), booted in [\d.]+ s$/m);
  process.stdout.write(`guest-lab (cli): ${up.out}`);
});

afterAll(async () => {
  await devgate('lab', 'down');
  disposeAllLoopDisks();
  delete process.env.DEVGATE_DOMAINS;
  delete process.env.XDG_RUNTIME_DIR;
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('devgate lab with a real guest (lab up --os)', () => {
  it('runs commands in the guest, with their output and exit status', async () => {
    const uname = await devgate('lab', 'exec', 'work', '--', 'uname', '-n');
    expect(uname).toMatchObject({ code: 0, out: 'work\n' });
    expect(await inGuest('echo to-stderr >&2; exit 3')).toMatchObject({ code: 3, err: 'to-stderr\n' });
    expect((await devgate('lab', 'list')).out).toMatch(/^work +running +\d+ /m);
  });

  it('plugs and pulls emulated devices: plug prints the id, unplug takes an id or the only one of a kind', async () => {
    expect(await devgate('lab', 'plug', 'work', 'usb-kbd')).toMatchObject({ code: 0, out: 'kbd1\n' });
    expect(await devgate('lab', 'plug', 'work', 'usb-kbd')).toMatchObject({ code: 0, out: 'kbd2\n' });
    expect(await devgate('lab', 'wait', 'work', '/sys/bus/usb/devices/1-2/idVendor')).toMatchObject({ code: 0 });
    expect((await inGuest('cat /sys/bus/usb/devices/1-*/product')).out).toBe('QEMU USB Keyboard\nQEMU USB Keyboard\n');

    const ambiguous = await devgate('lab', 'unplug', 'work', 'usb-kbd');
    expect(ambiguous).toMatchObject({ code: 1, err: expect.stringContaining('kbd1, kbd2') });
    expect(await devgate('lab', 'unplug', 'work', 'kbd1')).toMatchObject({ code: 0, out: 'kbd1\n' });
    expect(await devgate('lab', 'unplug', 'work', 'usb-kbd')).toMatchObject({ code: 0, out: 'kbd2\n' });
    expect(await devgate('lab', 'wait', 'work', '/sys/bus/usb/devices/1-2', '--gone')).toMatchObject({ code: 0 });
  });

  it("qvm-block -a: the guest sees a new USB disk with the partition's content; -d takes it away", async () => {
    expect(await runCaptured('qvm-block', ['-a', 'work', `dom0:${partition}`])).toMatchObject({ code: 0, err: '' });
    expect((await runCaptured('qvm-block', ['-l'])).out).toMatch(
      new RegExp(`^dom0:${partition} .*\\(attached to 'work' as 'xvdi'\\)$`, 'm'),
    );
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda')).toMatchObject({ code: 0 });
    const read = await inGuest(
      'cat /sys/block/sda/removable /sys/block/sda/device/model; mkdir -p /mnt/stick && mount /dev/sda /mnt/stick && ' +
        'cat /mnt/stick/hello.txt && echo from-the-guest > /mnt/stick/new.txt && umount /mnt/stick',
    );
    expect(read).toMatchObject({ code: 0, err: '' });
    expect(read.out).toBe('1\nQEMU HARDDISK   \nwritten on the host\n');

    expect(await runCaptured('qvm-block', ['-d', 'work', `dom0:${partition}`])).toMatchObject({ code: 0, err: '' });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda', '--gone')).toMatchObject({ code: 0 });
    // What the guest wrote is on the host's partition.
    expect(execFileSync('debugfs', ['-R', 'cat /new.txt', `/dev/${partition}`], { stdio: 'pipe' }).toString()).toBe(
      'from-the-guest\n',
    );
  });

  it('qvm-block attach --ro: the guest reads the disk but cannot write to it', async () => {
    expect(await runCaptured('qvm-block', ['attach', '--ro', 'work', `dom0:${partition}`])).toMatchObject({ code: 0 });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda')).toMatchObject({ code: 0 });
    const readOnly = await inGuest(
      'cat /sys/block/sda/ro; mount /dev/sda /mnt/stick 2>/dev/null; cat /mnt/stick/hello.txt; ' +
        'echo x > /mnt/stick/other.txt; status=$?; dd if=/dev/zero of=/dev/sda bs=512 count=1 conv=fsync 2>/dev/null; ' +
        'echo "file $status, device $?"; umount /mnt/stick',
    );
    expect(readOnly.out).toMatch(/^1\nwritten on the host\nfile [1-9]\d*, device [1-9]\d*\n$/);
    expect(readOnly.err).toMatch(/Read-only file system/);

    expect(await runCaptured('qvm-block', ['detach', 'work', `dom0:${partition}`])).toMatchObject({ code: 0 });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda', '--gone')).toMatchObject({ code: 0 });
  });

  it('lab down stops the guest and leaves nothing behind', async () => {
    const registry = JSON.parse(fs.readFileSync(registryFile, 'utf8')) as { domains: Record<string, { pid: number }> };
    const { pid } = registry.domains['work'];
    const stateDir = path.join(dir, 'run', 'devgate', 'lab');
    expect(fs.readdirSync(stateDir).sort()).toEqual(['work.guest', 'work.log', 'work.pid', 'work.qmp']);

    expect(await devgate('lab', 'down', 'work')).toMatchObject({ code: 0, err: '' });
    expect(fs.readdirSync(stateDir)).toEqual([]);
    const state = fs.existsSync(`/proc/${pid}/stat`) ? fs.readFileSync(`/proc/${pid}/stat`, 'utf8') : '';
    expect(state.replace(/^.*\) /, '').charAt(0)).toMatch(/^[ZX]?$/); // gone (or a zombie awaiting its reaper)
    expect((await devgate('lab', 'list')).out).toBe('');
  });
});
