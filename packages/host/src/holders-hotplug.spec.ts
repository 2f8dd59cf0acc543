import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { firstValueFrom, filter, timeout } from 'rxjs';
import type { HostTree } from '@devgate/core';
import { LocalHostSource } from './local-host-source';
import { rootsUnder } from './sysfs-reader';

// A device-mapper device set up on a listed partition, then taken down: the kernel sends uevents for
// dm-0 only, none for the partition whose `holders` changed. A tree laid out as sysfs lays it out,
// and a stand-in udevadm that prints what the test appends; dm on a real kernel: a lab guest
// (apps/cli's dm-real-kernel.spec.ts).
jest.setTimeout(20_000);

const LOOP = '/devices/virtual/block/loop7';
const PART = `${LOOP}/loop7p1`;
const DM = '/devices/virtual/block/dm-0';

let dir: string;
let events: string;
let source: LocalHostSource;
let seqnum = 100;
let subscription: { unsubscribe(): void } | undefined;

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-holders-'));
  blockDevice(LOOP, { DEVNAME: 'loop7', DEVTYPE: 'disk', MAJOR: '7', MINOR: '7' });
  blockDevice(PART, { DEVNAME: 'loop7p1', DEVTYPE: 'partition', PARTN: '1', MAJOR: '259', MINOR: '0' });
  fs.mkdirSync(path.join(dir, 'proc/self'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'proc/self/mountinfo'), '');
  fs.writeFileSync(path.join(dir, 'proc/swaps'), 'Filename\tType\tSize\tUsed\tPriority\n');
  events = path.join(dir, 'events');
  fs.writeFileSync(events, '');
  const udevadm = path.join(dir, 'udevadm');
  fs.writeFileSync(
    udevadm,
    `#!/bin/sh\nprintf 'monitor will print the received events for:\\nKERNEL - the kernel uevents\\n\\n'\nexec tail -n +1 -f '${events}'\n`,
    { mode: 0o755 },
  );
  source = new LocalHostSource({ roots: rootsUnder(dir), hotplug: 'uevent', udev: false, udevadm, probeBlock: false });
  subscription = source.trees$.subscribe();
  expect(await source.whenListening()).toBe(true);
});

afterEach(() => {
  subscription?.unsubscribe();
  source.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

function blockDevice(devpath: string, uevent: Record<string, string>): void {
  const device = path.join(dir, 'sys', devpath);
  fs.mkdirSync(path.join(device, 'holders'), { recursive: true });
  fs.mkdirSync(path.join(device, 'slaves'));
  fs.writeFileSync(
    path.join(device, 'uevent'),
    Object.entries(uevent)
      .map(([key, value]) => `${key}=${value}\n`)
      .join(''),
  );
  fs.mkdirSync(path.join(dir, 'sys/class/block'), { recursive: true });
  fs.symlinkSync(path.join('../..', devpath), path.join(dir, 'sys/class/block', uevent.DEVNAME));
  fs.symlinkSync(path.relative(device, path.join(dir, 'sys/class/block')), path.join(device, 'subsystem'));
}

/** A kernel uevent as `udevadm monitor --kernel --property` prints it. */
function uevent(action: string, devpath: string, properties: Record<string, string>): void {
  const lines = [`KERNEL[${seqnum}.000000] ${action} ${devpath} (block)`, `ACTION=${action}`, `DEVPATH=${devpath}`];
  lines.push('SUBSYSTEM=block', ...Object.entries(properties).map(([k, v]) => `${k}=${v}`), `SEQNUM=${seqnum++}`);
  fs.appendFileSync(events, lines.join('\n') + '\n\n');
}

function holdersOf(tree: HostTree, devpath: string): readonly string[] | undefined {
  return tree.device(devpath)?.entries?.('holders');
}

function tree(test: (tree: HostTree) => boolean): Promise<HostTree> {
  return firstValueFrom(source.trees$.pipe(filter(test), timeout(5_000)));
}

it('reads a partition again when a device-mapper device is built on it, and when that is taken down', async () => {
  const dm = { DEVNAME: 'dm-0', DEVTYPE: 'disk', MAJOR: '254', MINOR: '0' };
  // dmsetup create: dm-0 appears empty (`add`), then its table is loaded (`change`).
  blockDevice(DM, dm);
  uevent('add', DM, dm);
  expect(holdersOf(await tree((t) => t.device(DM) !== undefined), PART)).toEqual([]);
  fs.mkdirSync(path.join(dir, 'sys', DM, 'slaves/loop7p1'));
  fs.mkdirSync(path.join(dir, 'sys', PART, 'holders/dm-0'));
  uevent('change', DM, dm);
  await tree((t) => holdersOf(t, PART)?.includes('dm-0') === true);
  expect(holdersOf(await tree(() => true), LOOP)).toEqual([]);

  // dmsetup remove: one `remove`, of dm-0.
  fs.rmSync(path.join(dir, 'sys', DM), { recursive: true });
  fs.rmSync(path.join(dir, 'sys/class/block/dm-0'));
  fs.rmdirSync(path.join(dir, 'sys', PART, 'holders/dm-0'));
  uevent('remove', DM, dm);
  const after = await tree((t) => t.device(DM) === undefined);
  expect(holdersOf(after, PART)).toEqual([]);
});
