import { HostTree, recordOf } from '@devgate/core';
import { dmHeldOpenNow, heldOpenOf, parseDmOpen } from './dm-open';
import { LOCAL_ROOTS, rootsUnder } from './sysfs-reader';

const block = (name: string, minor: number) =>
  recordOf(`/devices/virtual/block/${name}`, 'block', { DEVNAME: `/dev/${name}`, MAJOR: '254', MINOR: String(minor) });
const tree = (...names: string[]) => new HostTree(names.map((name, i) => block(name, i)));

/** A stand-in for dmsetup that counts its runs. */
const dmsetup = (output: string | undefined) => jest.fn(() => output);

describe('dmsetup’s open counts', () => {
  it('reads major, minor and open count per line, keeping the open ones', () => {
    expect([...parseDmOpen('254 0 1\n254 1 0\n253 12 3\n')]).toEqual(['254:0', '253:12']);
  });

  it('skips what is not such a line: no mappings, warnings, hostile text', () => {
    expect([...parseDmOpen('No devices found\n')]).toEqual([]);
    expect([...parseDmOpen('254 0 1 extra\n254:1:1\n-1 2 1\n254 2 x\n99999999 0 1\n\n254 3 2\n')]).toEqual(['254:3']);
  });
});

describe('the dm devices held open, for a tree’s usage', () => {
  it('asks dmsetup once when the tree has a dm device', () => {
    const run = dmsetup('254 0 0\n254 1 2\n');
    expect([...heldOpenOf(tree('loop0', 'dm-1'), LOCAL_ROOTS, run)!]).toEqual(['254:1']);
    expect(run).toHaveBeenCalledTimes(1);
  });

  it('forks nothing on a host without dm devices, or for a tree that is not the running kernel’s', () => {
    const run = dmsetup('254 0 1\n');
    expect(heldOpenOf(tree('loop0', 'sda'), LOCAL_ROOTS, run)).toBeUndefined();
    expect(heldOpenOf(tree('dm-0'), rootsUnder('/tmp/a-recording'), run)).toBeUndefined();
    expect(dmHeldOpenNow(rootsUnder('/tmp/a-recording'), '254:0', run)).toBeUndefined();
    expect(run).not.toHaveBeenCalled();
  });

  it('says nothing when dmsetup cannot say', () => {
    expect(heldOpenOf(tree('dm-0'), LOCAL_ROOTS, dmsetup(undefined))).toBeUndefined();
    expect(dmHeldOpenNow(LOCAL_ROOTS, '254:0', dmsetup(undefined))).toBeUndefined();
    expect(dmHeldOpenNow(LOCAL_ROOTS, '254:0', dmsetup('254 0 1\n'))).toBe(true);
    expect(dmHeldOpenNow(LOCAL_ROOTS, '254:0', dmsetup('254 0 0\n'))).toBe(false);
  });
});
