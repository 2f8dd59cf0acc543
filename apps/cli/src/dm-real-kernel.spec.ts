import * as path from 'node:path';
import { type Guest, bootGuest } from '@devgate/guest-lab';

// device-mapper on a real kernel (this host's has none; the lab guest's kernel has dm-mod): a mapping
// set up on a listed partition, then taken down, makes uevents for the dm device only. devgate
// follows the partition's `holders` all the same: busy while the mapping holds it, and its disk
// with it, free again once it is gone. The mapping itself is busy while a program holds it open
// (sysfs has no open count: dmsetup's). Runs in the guest from the host's build, with udevd.
// (udevd's inotify watch happens to send a `change` of the partition when dmsetup closes it after
// setting up the mapping; nothing at all comes for it when the mapping goes.)
jest.setTimeout(20 * 60_000);

const PACKAGE = path.resolve(__dirname, '..');
const SLOW = { timeoutMs: 600_000 };

let guest: Guest;

beforeAll(async () => {
  guest = await bootGuest({
    name: 'dm-real-kernel',
    modules: ['loop', 'dm-mod'],
    udev: true,
    memoryMb: 768,
    bootTimeoutMs: 600_000,
  });
  process.stdout.write(`dm-real-kernel: guest booted in ${guest.bootMs} ms (${guest.accel})\n`);
}, 660_000);

afterAll(async () => {
  await guest?.dispose();
});

// In the guest: devgate's block driver on the guest's own sysfs and uevents, as devgated runs it,
// and what it lists of the partition and its disk after each step (each waited for, with a deadline).
const SCRIPT = `
require('reflect-metadata');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const { firstValueFrom, filter, timeout } = require('rxjs');
const { Kernel } = require('@devgate/core');
const { LOCAL_ROOTS, LocalHostSource, blockInUseNow } = require('@devgate/host');
const { blockModule, parseBlockDevices } = require('@devgate/driver-block');

const run = (command, ...args) => execFileSync(command, args, { encoding: 'utf8' }).trim();
const image = '/run/dm-lab.img';
fs.writeFileSync(image, '');
fs.truncateSync(image, 8 << 20);
execFileSync('sfdisk', ['--quiet', image], { input: 'label: gpt\\nsize=4M, type=L\\n' });

const source = new LocalHostSource({ backend: 'dom0', hotplug: 'uevent', probeBlock: false });
const kernel = new Kernel().load(blockModule);
kernel.registerSource(source);
const manager = kernel.start();
const shown = (port) => {
  const device = manager.get({ devclass: 'block', backend: 'dom0', portId: port });
  return device ? (device.hiddenReason ?? 'free') : 'absent';
};
let disk, part;
const states = () => ({ [part]: shown(part), [disk]: shown(disk) });
const until = (what, test) =>
  test()
    ? Promise.resolve()
    : firstValueFrom(manager.events$.pipe(filter(test), timeout(120_000))).catch(() => {
        throw new Error('no ' + what + ' within 120 s: ' + JSON.stringify(states()));
      });

(async () => {
  const seen = [];
  try {
    if (!(await source.whenListening(60_000))) throw new Error('udevadm monitor never listened');
    disk = run('losetup', '--find', '--partscan', '--show', image).replace('/dev/', '');
    part = disk + 'p1';
    await until(part + ' listed', () => shown(part) === 'free');
    seen.push(states());
    run('dmsetup', 'create', 'devgate-lab', '--noudevsync', '--table', '0 2048 linear /dev/' + part + ' 0');
    const holder = fs.readdirSync('/sys/class/block/' + part + '/holders')[0];
    await until(part + ' in use by ' + holder, () => shown(part) === 'in use by ' + holder);
    seen.push({ ...states(), holder });
    // The mapping itself, while a program holds it open (this one) and once it is closed: a fresh
    // listing and the hand-over's own look. Opening makes no uevent; udev's probes end first.
    run('udevadm', 'settle');
    const mapping = () => {
      const oneShot = new LocalHostSource({ backend: 'dom0', hotplug: 'static', probeBlock: false });
      const listed = parseBlockDevices(oneShot.snapshot(), 'dom0').find((d) => d.port.portId === holder);
      return { listed: listed ? (listed.hiddenReason ?? 'free') : 'absent', handOver: blockInUseNow(LOCAL_ROOTS, holder) ?? 'free' };
    };
    const closed = mapping();
    const fd = fs.openSync('/dev/' + holder, 'r');
    const open = mapping();
    fs.closeSync(fd);
    seen.push({ closed, open, closedAgain: mapping() });
    run('dmsetup', 'remove', '--retry', 'devgate-lab');
    await until(part + ' free again', () => shown(part) === 'free' && shown(disk) === 'free');
    seen.push(states());
    console.log(JSON.stringify({ part, disk, seen }));
  } finally {
    kernel.dispose();
    execFileSync('sh', ['-c', 'dmsetup remove devgate-lab; partx -d /dev/' + disk + '; losetup -d /dev/' + disk], { stdio: 'ignore' });
  }
})().catch((error) => {
  console.error(error.message);
  process.exit(1);
});
`;

it('lists a partition busy while a device-mapper mapping holds it, the mapping busy while open, and both free once it is gone', async () => {
  const out = await guest.check(['node', '-e', SCRIPT], { ...SLOW, cwd: PACKAGE });
  const { part, disk, seen } = JSON.parse(out) as { part: string; disk: string; seen: Record<string, string>[] };
  expect(part).toBe(`${disk}p1`);
  const holder = seen[1].holder;
  expect(holder).toMatch(/^dm-\d+$/);
  expect(seen).toEqual([
    { [part]: 'free', [disk]: 'free' },
    { [part]: `in use by ${holder}`, [disk]: `partition ${part} is in use`, holder },
    {
      closed: { listed: 'free', handOver: 'free' },
      open: { listed: 'open', handOver: 'open' },
      closedAgain: { listed: 'free', handOver: 'free' },
    },
    { [part]: 'free', [disk]: 'free' },
  ]);
});
