import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HostTree, recordOf } from '@devgate/core';
import { EXCLUDE_FLAG_FILE, excludedLoopsOf } from './excluded-images';
import { LOCAL_ROOTS, rootsUnder } from './sysfs-reader';

let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-excluded-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const loop = (n: number, attributes: Record<string, string>) =>
  recordOf(
    `/devices/virtual/block/loop${n}`,
    'block',
    { MAJOR: '7', MINOR: String(n) },
    { size: '2048', ...attributes },
  );

describe('loop devices whose image a .qubes-exclude-block-devices file excludes', () => {
  it('finds the flag in the image’s directory or any above it, and nowhere else', () => {
    fs.mkdirSync(path.join(dir, 'vms/work'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'scratch'));
    fs.writeFileSync(path.join(dir, 'vms', EXCLUDE_FLAG_FILE), '');
    const tree = new HostTree([
      loop(0, { 'loop/backing_file': path.join(dir, 'vms/work/root.img') }),
      loop(1, { 'loop/backing_file': path.join(dir, 'vms/private.img (deleted)') }),
      loop(2, { 'loop/backing_file': path.join(dir, 'scratch/stick.img') }),
      loop(3, { size: '0' }),
      loop(4, { 'loop/backing_file': 'relative/vms/x.img' }),
    ]);
    expect([...excludedLoopsOf(tree, LOCAL_ROOTS)!]).toEqual(['7:0', '7:1']);
  });

  it('says nothing for a tree that is not the running kernel’s, or without a flag', () => {
    fs.writeFileSync(path.join(dir, EXCLUDE_FLAG_FILE), '');
    const flagged = new HostTree([loop(0, { 'loop/backing_file': path.join(dir, 'a.img') })]);
    expect(excludedLoopsOf(flagged, rootsUnder(dir))).toBeUndefined();
    const plain = new HostTree([loop(0, { 'loop/backing_file': '/nonexistent-devgate/a.img' })]);
    expect(excludedLoopsOf(plain, LOCAL_ROOTS)).toBeUndefined();
  });
});
