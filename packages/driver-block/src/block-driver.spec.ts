import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { firstValueFrom, filter, timeout } from 'rxjs';
import { type DeviceInfo, Kernel, describeDevice } from '@devgate/core';
import { LocalHostSource, LOCAL_ROOTS, readHostTree } from '@devgate/host';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { blockModule } from './block-module';
import { parseBlockDevices } from './parse-block-devices';

// These tests use real kernel loop devices: they need root, util-linux, fdisk and e2fsprogs,
// which .ci/run installs.
afterAll(() => disposeAllLoopDisks());

function byPort(devices: readonly DeviceInfo[]): Map<string, DeviceInfo> {
  return new Map(devices.map((d) => [d.port.portId, d]));
}

describe('block devices on this host (real loop devices)', () => {
  let disk: LoopDisk;
  afterEach(() => disk?.dispose());

  it('finds a disk and its partitions with sizes, numbers, parents and ids', () => {
    disk = createLoopDisk({ sizeMiB: 64, partitions: [{ sizeMiB: 30 }, {}] });
    const devices = byPort(parseBlockDevices(readHostTree(LOCAL_ROOTS), 'dom0'));
    const whole = devices.get(disk.name)!;
    const [p1, p2] = disk.partitions.map((p) => devices.get(p)!);
    expect(whole.data).toMatchObject({ kind: 'disk', size: 64 * 1024 * 1024, 'read-only': false });
    expect(whole.data['backing-file']).toBe(disk.image);
    expect(whole.legacyDescription).toBe(disk.image);
    expect(whole.hiddenReason).toBeUndefined();
    expect(p1.data).toMatchObject({ kind: 'partition', partition: 1, size: 30 * 1024 * 1024 });
    expect(p2.data.partition).toBe(2);
    expect(p1.parent).toEqual({ devclass: 'block', backend: 'dom0', portId: disk.name });
    const loopNumber = disk.name.replace('loop', '');
    expect(whole.deviceId).toBe(`0000:0000::?******:${loopNumber}`);
    expect(p1.deviceId).toBe(`${whole.deviceId}:1`);
    // A partition with neither model nor label is named after its loop device's backing file.
    expect(describeDevice(p1)).toBe(`Block_Storage: sub-device of dom0:${disk.name} ${disk.image}`);
    expect(p1.legacyDescription).toBe(' ()');
    expect(describeDevice(whole)).toBe(`Block_Storage: hosted by dom0 ${disk.image}`);
  });

  it('hides a mounted partition, and its disk with it, but not the sibling', () => {
    disk = createLoopDisk({ sizeMiB: 64, partitions: [{ sizeMiB: 30, label: 'MOUNTME' }, {}] });
    const mountpoint = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-mnt-'));
    execFileSync('mount', [`/dev/${disk.partitions[0]}`, mountpoint]);
    try {
      const devices = byPort(parseBlockDevices(readHostTree(LOCAL_ROOTS), 'dom0'));
      expect(devices.get(disk.partitions[0])!.hiddenReason).toBe('mounted');
      expect(devices.get(disk.name)!.hiddenReason).toBe(`partition ${disk.partitions[0]} is in use`);
      expect(devices.get(disk.partitions[1])!.hiddenReason).toBeUndefined();
    } finally {
      execFileSync('umount', [mountpoint]);
      fs.rmdirSync(mountpoint);
    }
  });

  it('offers one of two loop devices over the same image: the one the host uses, if it uses one', () => {
    disk = createLoopDisk({ sizeMiB: 32, partitions: [{ sizeMiB: 16, label: 'TWIN' }, {}] });
    const twin = execFileSync('losetup', ['-f', '--show', disk.image], { encoding: 'utf8' }).trim();
    const twinName = path.basename(twin);
    const mountpoint = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-mnt-'));
    let mounted = false;
    try {
      execFileSync('partx', ['-a', twin]);
      const hidden = () => {
        const devices = byPort(parseBlockDevices(readHostTree(LOCAL_ROOTS), 'dom0'));
        return [disk.name, `${disk.name}p1`, twinName, `${twinName}p1`].map(
          (name) => devices.get(name)?.hiddenReason ?? 'offered',
        );
      };
      const [first, second] =
        Number(disk.name.slice(4)) < Number(twinName.slice(4)) ? [disk.name, twinName] : [twinName, disk.name];
      const expected = (name: string, reason: string) => (name === second ? reason : 'offered');
      expect(hidden()).toEqual([
        expected(disk.name, `same file as ${first}`),
        expected(disk.name, `same file as ${first}`),
        expected(twinName, `same file as ${first}`),
        expected(twinName, `same file as ${first}`),
      ]);
      // The host mounts the twin's partition: the twin is the one in use, the other name hidden.
      execFileSync('mount', [`/dev/${twinName}p1`, mountpoint]);
      mounted = true;
      expect(hidden()).toEqual([
        `same file as ${twinName}`,
        `same file as ${twinName}`,
        `partition ${twinName}p1 is in use`,
        'mounted',
      ]);
    } finally {
      if (mounted) execFileSync('umount', [mountpoint]);
      fs.rmdirSync(mountpoint);
      execFileSync('partx', ['-d', twin]);
      execFileSync('losetup', ['-d', twin]);
    }
  });

  it('hides an image below a .qubes-exclude-block-devices file, with its partitions, and offers it without one', () => {
    disk = createLoopDisk({ sizeMiB: 16, partitions: [{}] });
    const flag = path.join(path.dirname(disk.image), '.qubes-exclude-block-devices');
    // A fresh one-shot read each time: a device's record is looked at once (as Qubes' rules, at udev
    // time). No blkid probes: labels are not asked for, and one still running would hold the next
    // test's partitions open.
    const reasons = () => {
      const devices = byPort(
        parseBlockDevices(new LocalHostSource({ hotplug: 'static', probeBlock: false }).snapshot(), 'dom0'),
      );
      return [disk.name, disk.partitions[0]].map((name) => devices.get(name)?.hiddenReason ?? 'offered');
    };
    expect(reasons()).toEqual(['offered', 'offered']);
    fs.writeFileSync(flag, '');
    try {
      expect(reasons()).toEqual(['excluded (.qubes-exclude-block-devices)', 'excluded (.qubes-exclude-block-devices)']);
    } finally {
      fs.rmSync(flag);
    }
    expect(reasons()).toEqual(['offered', 'offered']);
  });

  it('hides a mounted btrfs partition (mountinfo names no device for it), and the backend refuses it', async () => {
    disk = createLoopDisk({ sizeMiB: 160, partitions: [{ sizeMiB: 128 }, {}] });
    const [p1] = disk.partitions;
    execFileSync('mkfs.btrfs', ['-q', `/dev/${p1}`]);
    const mountpoint = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-mnt-'));
    execFileSync('mount', [`/dev/${p1}`, mountpoint]);
    try {
      const devices = byPort(parseBlockDevices(readHostTree(LOCAL_ROOTS), 'dom0'));
      expect(devices.get(p1)!.hiddenReason).toBe('mounted');
      expect(devices.get(disk.name)!.hiddenReason).toBe(`partition ${p1} is in use`);
      const source = new LocalHostSource({ hotplug: 'static' });
      const spec = { kind: 'block', params: {}, options: {} };
      await expect(source.dataPath(devices.get(p1)!, spec)).rejects.toMatchObject({ code: 'DG_DEVICE_IN_USE' });
    } finally {
      execFileSync('umount', [mountpoint]);
      fs.rmdirSync(mountpoint);
    }
  });

  it('reports a read-only loop device as read-only', () => {
    disk = createLoopDisk({ sizeMiB: 16, readOnly: true });
    const device = byPort(parseBlockDevices(readHostTree(LOCAL_ROOTS), 'dom0')).get(disk.name)!;
    expect(device.data['read-only']).toBe(true);
  });

  it('hides the host’s own mounted root disk and never lists zram', () => {
    const devices = parseBlockDevices(readHostTree(LOCAL_ROOTS), 'dom0');
    expect(devices.some((d) => d.port.portId.startsWith('zram'))).toBe(false);
    const rootMajMin = fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .find((l) => l.split(' ')[4] === '/')
      ?.split(' ')[2];
    const root = devices.find((d) => d.data['major-minor'] === rootMajMin);
    expect(root?.hiddenReason ?? 'mounted').toBe('mounted');
  });
});

describe('BlockDriver through the kernel (hotplug and probing)', () => {
  let disk: LoopDisk | undefined;
  let kernel: Kernel;
  afterEach(() => {
    kernel?.dispose();
    disk?.dispose();
    disk = undefined;
  });

  // With udevd (CI runs one, as real hosts do) the label is udev's; without (`udev: false` reads the
  // host as one without udevd, whether one runs or not) only devgate's own blkid probe can find it.
  it.each([
    ['udev’s events and database', true],
    ['blkid probes, as without udevd', false],
  ])(
    'reports an added loop disk, its label from %s, and its removal',
    async (_how, udev) => {
      const source = new LocalHostSource({ hotplug: 'uevent', udev });
      kernel = new Kernel().load(blockModule);
      kernel.registerSource(source);
      const manager = kernel.start();
      expect(source.hotplug).toBe('uevent');
      expect(await source.whenListening()).toBe(true); // udevadm has bound its sockets

      const added = firstValueFrom(
        manager.events$.pipe(
          filter((e) => e.type === 'added' && e.device.port.portId.endsWith('p1')),
          timeout(5000),
        ),
      );
      disk = createLoopDisk({ sizeMiB: 32, partitions: [{ label: 'DEVGATE' }] });
      const event = await added;
      expect(event.type === 'added' && event.device.port.portId).toBe(disk.partitions[0]);

      // The label comes a moment later (udev's event, or a blkid probe in the background), as a `changed` event.
      const partition = { devclass: 'block', backend: 'dom0', portId: disk.partitions[0] };
      for (let i = 0; i < 100 && manager.get(partition)?.data.label !== 'DEVGATE'; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(manager.get(partition)?.data.label).toBe('DEVGATE');
      expect(manager.get(partition)?.legacyDescription).toBe(' (DEVGATE)');

      // A detached loop device stays in /sys, empty: its partitions go, and it is hidden.
      const removed = firstValueFrom(
        manager.events$.pipe(
          filter((e) => e.type === 'removed' && e.device.port.portId === partition.portId),
          timeout(5000),
        ),
      );
      disk.dispose();
      await removed;
      const whole = manager.get({ devclass: 'block', backend: 'dom0', portId: disk.name });
      expect(whole?.hiddenReason ?? 'gone').toMatch(/^(empty loop device|gone)$/);
      expect(manager.list().some((d) => d.port.portId.startsWith(disk!.name))).toBe(false);
      disk = undefined;
    },
    15_000,
  );

  it('hides a partition mounted after it was listed (mounting makes no uevent), and the backend refuses it', async () => {
    const source = new LocalHostSource({ hotplug: 'uevent' });
    kernel = new Kernel().load(blockModule);
    kernel.registerSource(source);
    const manager = kernel.start();
    expect(await source.whenListening()).toBe(true);
    disk = createLoopDisk({ sizeMiB: 32, partitions: [{ label: 'LATER' }] });
    const partition = { devclass: 'block', backend: 'dom0', portId: disk.partitions[0] };
    const hidden = (reason: string | undefined) =>
      firstValueFrom(
        manager.events$.pipe(
          filter(() => manager.get(partition) !== undefined && manager.get(partition)?.hiddenReason === reason),
          timeout(5000),
        ),
      );
    for (let i = 0; i < 100 && !manager.get(partition); i++) await new Promise((r) => setTimeout(r, 20));
    const listed = manager.get(partition)!;
    expect(listed.hiddenReason).toBeUndefined();

    const mountpoint = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-mnt-'));
    const nowHidden = hidden('mounted');
    execFileSync('mount', [`/dev/${disk.partitions[0]}`, mountpoint]);
    let mounted = true;
    try {
      // What a request made before the listing caught up meets: the backend looks again.
      const spec = { kind: 'block', params: {}, options: {} };
      await expect(source.dataPath(listed, spec)).rejects.toMatchObject({ code: 'DG_DEVICE_IN_USE' });
      const whole = manager.get({ devclass: 'block', backend: 'dom0', portId: disk.name })!;
      await expect(source.dataPath(whole, spec)).rejects.toThrow(`partition ${disk.partitions[0]} is mounted`);
      await nowHidden;
      const shownAgain = hidden(undefined);
      execFileSync('umount', [mountpoint]);
      mounted = false;
      await shownAgain;
      await expect(source.dataPath(listed, spec)).resolves.toMatchObject({
        params: { path: `/dev/${disk.partitions[0]}` },
      });
    } finally {
      if (mounted) execFileSync('umount', [mountpoint]);
      fs.rmdirSync(mountpoint);
    }
  }, 15_000);

  it('probes again a device whose blkid was killed at its deadline, rather than listing it without a label', async () => {
    // A blkid that hangs the first time it sees this test's label (a slow disk, a busy machine), then
    // answers: killed at the source's deadline, its silence must not be taken for "nothing there".
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slow-blkid-'));
    const marker = path.join(dir, 'hung-once');
    const realBlkid = execFileSync('sh', ['-c', 'command -v blkid'], { encoding: 'utf8' }).trim();
    fs.writeFileSync(
      path.join(dir, 'blkid'),
      `#!/bin/sh\nout=$(${realBlkid} "$@")\ncode=$?\n` +
        `case "$out" in *LABEL=SLOWPROBE*) [ -e ${marker} ] || { : > ${marker}; exec sleep 30; } ;; esac\n` +
        `printf '%s\\n' "$out"\nexit $code\n`,
      { mode: 0o755 },
    );
    try {
      const blkid = path.join(dir, 'blkid');
      const source = new LocalHostSource({ hotplug: 'uevent', udev: false, blkid, probeTimeoutMs: 500 });
      kernel = new Kernel().load(blockModule);
      kernel.registerSource(source);
      const manager = kernel.start();
      expect(await source.whenListening()).toBe(true);
      disk = createLoopDisk({ sizeMiB: 32, partitions: [{ label: 'SLOWPROBE' }] });
      const partition = { devclass: 'block', backend: 'dom0', portId: disk.partitions[0] };
      const deadline = Date.now() + 10_000;
      while (manager.get(partition)?.data.label !== 'SLOWPROBE' && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(fs.existsSync(marker)).toBe(true); // the first probe did hang, and was killed
      expect(manager.get(partition)?.data.label).toBe('SLOWPROBE');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 20_000);
});
