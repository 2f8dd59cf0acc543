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

  const partition = (name: string, properties: Record<string, string>): RawDeviceRecord => ({
    devpath: `/devices/virtual/block/loop7/${name}`,
    subsystem: 'block',
    properties: { DEVNAME: `/dev/${name}`, DEVTYPE: 'partition', ...properties },
    attribute: (attribute) => (attribute === 'size' ? '2048' : undefined),
  });

  it("leaves alone a partition udev's blkid looked at, even with no filesystem found, and probes one udev says nothing of", async () => {
    const probes = new BlockProbes('/dev', { blkid });
    const blank = partition('loop7p1', { ID_PART_ENTRY_SCHEME: 'gpt', ID_PART_ENTRY_NUMBER: '1' });
    const labelled = partition('loop7p2', { ID_PART_ENTRY_SCHEME: 'gpt', ID_FS_TYPE: 'ext4', ID_FS_LABEL: 'A' });
    const unknown = partition('loop7p3', {});
    const tree = new HostTree([blank, labelled, unknown], { mounted: new Set(), swaps: new Set() });
    probes.withProbes(tree);
    await probes.whenIdle(10_000);
    expect(probed().trim().split(/\s+/)).toEqual(['-p', '-o', 'export', '/dev/loop7p3']);
  });
});
