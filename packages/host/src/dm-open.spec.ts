import { HostTree, recordOf } from '@devgate/core';
import { dmHeldOpenNow, parseDmOpen, withHeldOpen } from './dm-open';
import { LOCAL_ROOTS, rootsUnder } from './sysfs-reader';

const block = (name: string, minor: number) =>
  recordOf(`/devices/virtual/block/${name}`, 'block', { DEVNAME: `/dev/${name}`, MAJOR: '254', MINOR: String(minor) });
const tree = (...names: string[]) =>
  new HostTree(
    names.map((name, i) => block(name, i)),
    { mounted: new Set(['8:1']), swaps: new Set() },
  );

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

describe('the dm devices held open, in a tree’s usage', () => {
  it('asks dmsetup once when the tree has a dm device, keeping the rest of the usage', () => {
    const run = dmsetup('254 0 0\n254 1 2\n');
    const found = withHeldOpen(tree('loop0', 'dm-1'), LOCAL_ROOTS, run);
    expect(run).toHaveBeenCalledTimes(1);
    expect([...found.usage.heldOpen!]).toEqual(['254:1']);
    expect([...found.usage.mounted]).toEqual(['8:1']);
    expect(found.devices().map((r) => r.devpath)).toEqual(
      tree('loop0', 'dm-1')
        .devices()
        .map((r) => r.devpath),
    );
  });

  it('forks nothing on a host without dm devices, or for a tree that is not the running kernel’s', () => {
    const run = dmsetup('254 0 1\n');
    const plain = tree('loop0', 'sda');
    expect(withHeldOpen(plain, LOCAL_ROOTS, run)).toBe(plain);
    const recorded = tree('dm-0');
    expect(withHeldOpen(recorded, rootsUnder('/tmp/a-recording'), run)).toBe(recorded);
    expect(dmHeldOpenNow(rootsUnder('/tmp/a-recording'), '254:0', run)).toBeUndefined();
    expect(run).not.toHaveBeenCalled();
  });

  it('leaves the tree as it was when dmsetup cannot say', () => {
    const unknown = tree('dm-0');
    const found = withHeldOpen(unknown, LOCAL_ROOTS, dmsetup(undefined));
    expect(found).toBe(unknown);
    expect(found.usage.heldOpen).toBeUndefined();
    expect(dmHeldOpenNow(LOCAL_ROOTS, '254:0', dmsetup(undefined))).toBeUndefined();
    expect(dmHeldOpenNow(LOCAL_ROOTS, '254:0', dmsetup('254 0 1\n'))).toBe(true);
    expect(dmHeldOpenNow(LOCAL_ROOTS, '254:0', dmsetup('254 0 0\n'))).toBe(false);
  });
});
