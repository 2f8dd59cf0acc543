import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HostTree, type RawDeviceRecord } from '@devgate/core';
import { BlockProbes } from './block-probes.js';

// Which block devices devgate's own blkid looks at: only those udev's blkid has not looked at.
describe('BlockProbes', () => {
  let dir: string;
  let blkid: string;
  const probed = () =>
    fs.existsSync(path.join(dir, 'probed')) ? fs.readFileSync(path.join(dir, 'probed'), 'utf8') : '';

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'block-probes-'));
    // A blkid that writes down what it was asked to probe and finds nothing.
    blkid = path.join(dir, 'blkid');
    fs.writeFileSync(blkid, `#!/bin/sh\necho "$@" >> ${JSON.stringify(path.join(dir, 'probed'))}\n`, { mode: 0o755 });
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** A device node directory with these nodes (regular files: they open as a device does). */
  const devNodes = (...names: string[]): string => {
    const dev = path.join(dir, 'dev');
    fs.mkdirSync(dev);
    for (const name of names) fs.writeFileSync(path.join(dev, name), '');
    return dev;
  };

  const partition = (name: string, properties: Record<string, string>): RawDeviceRecord => ({
    devpath: `/devices/virtual/block/loop7/${name}`,
    subsystem: 'block',
    properties: { DEVNAME: `/dev/${name}`, DEVTYPE: 'partition', ...properties },
    attribute: (attribute) => (attribute === 'size' ? '2048' : undefined),
  });

  it("leaves alone a partition udev's blkid looked at, even with no filesystem found, and probes one udev says nothing of", async () => {
    const dev = devNodes('loop7p3');
    const probes = new BlockProbes(dev, { blkid });
    const blank = partition('loop7p1', { ID_PART_ENTRY_SCHEME: 'gpt', ID_PART_ENTRY_NUMBER: '1' });
    const labelled = partition('loop7p2', { ID_PART_ENTRY_SCHEME: 'gpt', ID_FS_TYPE: 'ext4', ID_FS_LABEL: 'A' });
    const unknown = partition('loop7p3', {});
    const tree = new HostTree([blank, labelled, unknown], { mounted: new Set(), swaps: new Set() });
    probes.withProbes(tree);
    await probes.whenIdle(10_000);
    expect(probed().trim().split(/\s+/)).toEqual(['-p', '-o', 'export', path.join(dev, 'loop7p3')]);
  });

  it('forks no blkid for a node that does not open (blkid would fail on it), and finds nothing there', async () => {
    const dev = devNodes('loop7p1');
    const probes = new BlockProbes(dev, { blkid, batchDelayMs: 0 });
    const present = partition('loop7p1', {});
    const gone = partition('loop7p2', {});
    probes.withProbes(new HostTree([gone], { mounted: new Set(), swaps: new Set() }));
    await probes.whenIdle(10_000);
    expect(probed()).toBe('');
    const tree = new HostTree([present, gone], { mounted: new Set(), swaps: new Set() });
    probes.withProbes(tree);
    await probes.whenIdle(10_000);
    expect(probed().trim().split(/\s+/)).toEqual(['-p', '-o', 'export', path.join(dev, 'loop7p1')]);
    // Settled: asked again, neither is probed again.
    probes.withProbes(tree);
    await probes.whenIdle(10_000);
    expect(probed().trim().split('\n')).toHaveLength(1);
  });

  it('forks no blkid once disposed, not even for a batch whose nodes were being opened', async () => {
    const dev = devNodes('loop7p1');
    const probes = new BlockProbes(dev, { blkid, batchDelayMs: 0 });
    // The batch's open is held until the probes are disposed.
    const open = fs.promises.open;
    let opening!: () => void;
    const opened = new Promise<void>((resolve) => (opening = resolve));
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const held = jest.spyOn(fs.promises, 'open').mockImplementation(async (...args) => {
      opening();
      await released;
      return open(...args);
    });
    try {
      probes.withProbes(new HostTree([partition('loop7p1', {})], { mounted: new Set(), swaps: new Set() }));
      await opened;
      probes.dispose();
      release();
      await probes.whenIdle(10_000);
    } finally {
      held.mockRestore();
    }
    expect(probed()).toBe('');
  });
});
