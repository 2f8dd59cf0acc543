import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { blockInUseNow } from './block-usage';
import { rootsUnder } from './sysfs-reader';

// The kinds of use a real kernel shows here only with device-mapper or RAID (not in this machine's
// kernel): a tree laid out as sysfs lays them out. Mounts on real loop devices: block-driver.spec.ts.

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usage-'));
  const disk = path.join(dir, 'sys/class/block/sdb');
  for (const [sub, dev] of [
    ['', '8:16'],
    ['sdb1', '8:17'],
    ['sdb2', '8:18'],
  ]) {
    fs.mkdirSync(path.join(disk, sub, 'holders'), { recursive: true });
    fs.writeFileSync(path.join(disk, sub, 'dev'), `${dev}\n`);
    if (!sub) continue;
    fs.writeFileSync(path.join(disk, sub, 'partition'), `${sub.slice(-1)}\n`);
    // Every block device, partitions too, is listed under class/block.
    fs.symlinkSync(path.join('sdb', sub), path.join(dir, 'sys/class/block', sub));
  }
  fs.mkdirSync(path.join(dir, 'proc/self'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'proc/self/mountinfo'), '22 1 254:1 / / rw - ext4 /dev/vda1 rw\n');
  fs.writeFileSync(path.join(dir, 'proc/swaps'), 'Filename\tType\tSize\tUsed\tPriority\n');
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const inUse = (name: string) => blockInUseNow(rootsUnder(dir), name);

it('finds nothing on a disk nobody uses', () => {
  expect(inUse('sdb')).toBeUndefined();
  expect(inUse('sdb1')).toBeUndefined();
});

it('names the partition a device-mapper device holds, for the partition and for its disk', () => {
  fs.mkdirSync(path.join(dir, 'sys/class/block/sdb/sdb2/holders/dm-0'));
  expect(inUse('sdb2')).toBe('in use by dm-0');
  expect(inUse('sdb')).toBe('partition sdb2 is in use by dm-0');
  expect(inUse('sdb1')).toBeUndefined();
});

it('counts holders whose names are not kernel names: no escapes in the reason, and still in use', () => {
  // A sysroot or a recording's tree can name a holder anything a file can be named.
  const hostile = 'dm-0\u001b]0;PWNED\u0007\u001b[2J\u202eexe.pdf';
  fs.mkdirSync(path.join(dir, 'sys/class/block/sdb/sdb2/holders', hostile));
  expect(inUse('sdb2')).toBe('in use by 1 device');
  expect(inUse('sdb')).toBe('partition sdb2 is in use by 1 device');
  fs.mkdirSync(path.join(dir, 'sys/class/block/sdb/sdb2/holders/dm-1'));
  expect(inUse('sdb2')).toBe('in use by dm-1 and 1 other device');
  for (const n of [2, 3, 4, 5, 6]) fs.mkdirSync(path.join(dir, `sys/class/block/sdb/sdb2/holders/dm-${n}`));
  expect(inUse('sdb2')).toBe('in use by dm-1, dm-2, dm-3, dm-4 and 3 other devices');
  // eslint-disable-next-line no-control-regex
  expect(inUse('sdb')).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/);
});

it('sees a mounted partition and a swap partition', () => {
  fs.appendFileSync(path.join(dir, 'proc/self/mountinfo'), '40 22 8:17 / /media/stick rw - vfat /dev/sdb1 rw\n');
  fs.appendFileSync(path.join(dir, 'proc/swaps'), '/dev/sdb2\tpartition\t1048572\t0\t-2\n');
  expect(inUse('sdb1')).toBe('mounted');
  expect(inUse('sdb2')).toBe('swap');
  expect(inUse('sdb')).toBe('partition sdb1 is mounted');
});

it('answers nothing for names that are not a block device here, or not a name', () => {
  expect(inUse('sdz')).toBeUndefined();
  expect(inUse('../sdb')).toBeUndefined();
});
