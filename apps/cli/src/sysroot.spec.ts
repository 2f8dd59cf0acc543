import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { recordedFixture } from '@devgate/testkit';
import { runCaptured } from './test-io';

// `devgate list --sysroot DIR` where DIR is an lsblk-style dump (sys/block, sys/dev/block, no
// sys/class): util-linux's simple-nvme dump, extracted as a user would.
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-cli-sysroot-'));
  execFileSync('tar', ['-xJf', recordedFixture('simple-nvme.tar.xz'), '-C', dir]);
});

afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

it('devgate list --sysroot lists the disks and partitions of an lsblk dump', async () => {
  const { code, out, err } = await runCaptured('devgate', [
    'list',
    '--all',
    '--json',
    '--sysroot',
    path.join(dir, 'simple-nvme'),
  ]);
  expect(err).toBe('');
  expect(code).toBe(0);
  const devices = JSON.parse(out) as { port: string; class: string; parent: string | null }[];
  expect(devices.filter((d) => d.class === 'block').map((d) => d.port)).toEqual(
    expect.arrayContaining(['dom0:sda', 'dom0:sda6', 'dom0:sdb1', 'dom0:nvme0n1', 'dom0:nvme0n1p1']),
  );
  expect(devices.find((d) => d.port === 'dom0:sdb1')!.parent).toBe('dom0:sdb');
});

it('qvm-block -l --sysroot prints the seed’s lines with sizes for the partitions that are not in use', async () => {
  const { code, out } = await runCaptured('qvm-block', ['-l', '--sysroot', path.join(dir, 'simple-nvme')]);
  expect(code).toBe(0);
  // nvme0n1p1 is not mounted in the dump (259:2 and 259:3 are).
  expect(out).toMatch(/^dom0:nvme0n1p1 +.* \d+(\.\d)? [KMGT]iB$/m);
});
