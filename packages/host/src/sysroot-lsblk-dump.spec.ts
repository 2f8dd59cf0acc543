import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sysname } from '@devgate/core';
import { LocalHostSource } from './local-host-source.js';
import { rootsUnder } from './sysfs-reader.js';
import { recorded } from './testing/recordings';

// `--sysroot DIR` of an lsblk-style dump: DIR/sys/block and DIR/sys/dev/block, no DIR/sys/class,
// no uevent files. The real dump (simple-nvme.tar.xz, from util-linux's lsblk tests), extracted as
// a user would, read in place by the local source.
let dir: string;
let root: string;

/** Every path under a directory with its type and size: what "nothing was written" compares. */
function listing(top: string): string[] {
  const out: string[] = [];
  const walk = (at: string) => {
    for (const entry of fs.readdirSync(at, { withFileTypes: true })) {
      const full = path.join(at, entry.name);
      const stat = fs.lstatSync(full);
      out.push(`${path.relative(top, full)} ${stat.mode.toString(8)} ${stat.size}`);
      if (entry.isDirectory()) walk(full);
    }
  };
  walk(top);
  return out.sort();
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-lsblk-sysroot-'));
  execFileSync('tar', ['-xJf', recorded('simple-nvme.tar.xz'), '-C', dir]);
  root = path.join(dir, 'simple-nvme');
});

afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

it('the dump has the lsblk layout: sys/block and sys/dev/block, no sys/class, no uevent files', () => {
  expect(fs.existsSync(path.join(root, 'sys/block/sda'))).toBe(true);
  expect(fs.existsSync(path.join(root, 'sys/dev/block/8:0'))).toBe(true);
  expect(fs.existsSync(path.join(root, 'sys/class'))).toBe(false);
  expect(listing(path.join(root, 'sys')).some((line) => line.split(' ')[0].endsWith('/uevent'))).toBe(false);
});

it('lists the disks and partitions of the dump, with kernel-style properties, and writes nothing', () => {
  const before = listing(root);
  const source = new LocalHostSource({ roots: rootsUnder(root), hotplug: 'static' });
  try {
    const tree = source.snapshot();
    const block = tree.devices('block');
    expect(block.map((r) => sysname(r.devpath)).sort()).toEqual([
      'nvme0n1',
      'nvme0n1p1',
      'nvme0n1p2',
      'nvme0n1p3',
      'sda',
      'sda1',
      'sda2',
      'sda3',
      'sda4',
      'sda5',
      'sda6',
      'sdb',
      'sdb1',
    ]);
    const byName = (name: string) => block.find((r) => sysname(r.devpath) === name)!;
    expect(byName('sda').properties).toMatchObject({
      SUBSYSTEM: 'block',
      DEVTYPE: 'disk',
      DEVNAME: '/dev/sda',
      MAJOR: '8',
      MINOR: '0',
    });
    expect(byName('nvme0n1p3').properties).toMatchObject({
      DEVTYPE: 'partition',
      PARTN: '3',
      MAJOR: '259',
      MINOR: '3',
    });
    expect(byName('sdb1').attribute('size')).toBe('156299440');
    // The SCSI device and the NVMe controller are parents drivers can walk up to (models, buses).
    expect(tree.parent(byName('sda'))!.attribute('model')).toBe('KINGSTON SH103S3');
    expect(tree.parent(byName('nvme0n1'))!.subsystem).toBe('nvme');
    expect([...tree.usage.mounted].sort()).toEqual(['259:2', '259:3', '8:1', '8:17', '8:2', '8:4']);
  } finally {
    source.dispose();
  }
  expect(listing(root)).toEqual(before);
});

it('reads the dump through a symlinked path too', () => {
  const link = path.join(dir, 'via-link');
  fs.symlinkSync(root, link);
  const source = new LocalHostSource({ roots: rootsUnder(link), hotplug: 'static' });
  try {
    expect(source.snapshot().devices('block')).toHaveLength(13);
  } finally {
    source.dispose();
  }
});
