import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type ExportSpec } from '@devgate/backend-agent';
import { LiveExport } from './exports';

// An nbd export on a stand-in VM: a tree laid out like / with sysfs's class/block, /proc's mountinfo
// and swaps, and block nodes (mknod) with the major:minor devgated listed. The port is a plain file
// and qemu-nbd a stand-in that notes it ran and fails, so no export is ever served.
jest.setTimeout(30_000);

let dir: string;
let ran: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-exports-'));
  const disk = path.join(dir, 'sys/class/block/sdb');
  fs.mkdirSync(path.join(dir, 'dev'));
  for (const [sub, minor] of [
    ['', 16],
    ['sdb1', 17],
    ['sdb2', 18],
  ] as const) {
    fs.mkdirSync(path.join(disk, sub, 'holders'), { recursive: true });
    fs.writeFileSync(path.join(disk, sub, 'dev'), `8:${minor}\n`);
    execFileSync('mknod', [path.join(dir, 'dev', sub || 'sdb'), 'b', '8', String(minor)]);
    if (!sub) continue;
    fs.writeFileSync(path.join(disk, sub, 'partition'), `${sub.slice(-1)}\n`);
    fs.symlinkSync(path.join('sdb', sub), path.join(dir, 'sys/class/block', sub));
  }
  fs.mkdirSync(path.join(dir, 'proc/self'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'proc/self/mountinfo'), '22 1 254:1 / / rw - ext4 /dev/vda1 rw\n');
  fs.writeFileSync(path.join(dir, 'proc/swaps'), 'Filename\tType\tSize\tUsed\tPriority\n');
  fs.writeFileSync(path.join(dir, 'port'), '');
  fs.mkdirSync(path.join(dir, 'run'));
  ran = path.join(dir, 'qemu-nbd.ran');
  fs.writeFileSync(
    path.join(dir, 'qemu-nbd'),
    `#!/bin/sh\necho "$@" > ${ran}\necho 'stand-in qemu-nbd: no server here' >&2\nexit 1\n`,
    { mode: 0o755 },
  );
});

afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function nbdExport(devname: string, majorMinor: string, readOnly = false): LiveExport {
  const spec: ExportSpec = {
    id: 'e0123456789ab',
    kind: 'nbd',
    port: 'org.devgate.export.0',
    devname,
    majorMinor,
    readOnly,
    armTimeoutMs: 1000,
  };
  return new LiveExport(spec, {
    runDir: path.join(dir, 'run'),
    sysRoot: path.join(dir, 'sys'),
    devRoot: path.join(dir, 'dev'),
    procRoot: path.join(dir, 'proc'),
    qemuNbd: path.join(dir, 'qemu-nbd'),
    usbredirect: '/bin/false',
    portDevice: () => path.join(dir, 'port'),
    log: () => undefined,
  });
}

const mount = (majorMinor: string, source: string) =>
  fs.appendFileSync(
    path.join(dir, 'proc/self/mountinfo'),
    `40 22 ${majorMinor} / /media/stick rw - vfat ${source} rw\n`,
  );

describe('an nbd export of a block device this VM uses now', () => {
  it.each([
    ['a partition mounted since it was listed', () => mount('8:17', '/dev/sdb1'), ['sdb1', '8:17'], 'mounted'],
    ['its disk, for that partition', () => mount('8:17', '/dev/sdb1'), ['sdb', '8:16'], 'partition sdb1 is mounted'],
    [
      'a partition in swap',
      () => fs.appendFileSync(path.join(dir, 'proc/swaps'), '/dev/sdb2\tpartition\t1048572\t0\t-2\n'),
      ['sdb2', '8:18'],
      'swap',
    ],
    [
      'a partition a device-mapper device holds',
      () => fs.mkdirSync(path.join(dir, 'sys/class/block/sdb/sdb2/holders/dm-0')),
      ['sdb', '8:16'],
      'partition sdb2 is in use by dm-0',
    ],
  ] as const)(
    'refuses %s, as the host hand-over does, and never starts qemu-nbd',
    async (_what, use, [devname, majorMinor], reason) => {
      use();
      // Read-only too: the host's hand-over refuses a device in use whatever the mode.
      for (const readOnly of [false, true]) {
        await expect(nbdExport(devname, majorMinor, readOnly).start()).rejects.toMatchObject({
          code: 'DEVICE_IN_USE',
          message: reason,
        });
      }
      expect(fs.existsSync(ran)).toBe(false);
    },
  );

  it('starts qemu-nbd on the node of a device nobody uses (another disk is mounted)', async () => {
    mount('8:32', '/dev/sdc');
    await expect(nbdExport('sdb1', '8:17').start()).rejects.toMatchObject({
      code: 'EXPORT_FAILED',
      message: expect.stringContaining('stand-in qemu-nbd: no server here'),
    });
    expect(fs.readFileSync(ran, 'utf8')).toContain(path.join(dir, 'dev/sdb1'));
  });
});
