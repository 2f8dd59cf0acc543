import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { type DeviceEvent, type DeviceInfo, type HostTree, Kernel } from '@devgate/core';
import { LocalHostSource } from '@devgate/host';
import { type UdevdHandle, ensureUdevd, removePartitions, settleUdev } from '@devgate/testkit';
import { blockModule } from './block-module';

// Issue #15: 256 block devices (64 loop disks with 3 labelled partitions each) appear at once on a
// host where systemd-udevd runs, as on every real host. udev's own work on them (blkid probes,
// database entries, symlinks, `change` events after `add`) races with devgate's reads: none may be
// missed, listed twice, or listed with a label that is not its own. Then all 192 are relabelled
// (udev's watch sends a `change`, and its database follows a moment later); then all are pulled
// and at once plugged back in the reverse order, before udev is done with the removals: every
// loopNpM gets the major:minor and the database entry of a partition with another label.
// Needs root, util-linux, fdisk, e2fsprogs and udev (systemd-udevd), which .ci/run installs.

const DISKS = 64;
const PARTITIONS = 3;
const run = promisify(execFile);
jest.setTimeout(300_000);

let udevd: UdevdHandle | undefined;
let dir: string;
const images: string[] = [];

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-burst-'));
  // Fails with the reason when no udevd runs and none can be started: this test is about udevd.
  udevd = await ensureUdevd();
});

afterAll(async () => {
  try {
    detachAll(images);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    await udevd?.stop();
  }
});

/** Every loop device backed by one of these images: partitions first, then the device. */
function detachAll(files: readonly string[]): void {
  const errors: unknown[] = [];
  for (const image of files) {
    for (const device of loopsOf(image)) {
      try {
        removePartitions(device);
      } catch (error) {
        errors.push(error);
      }
      try {
        execFileSync('losetup', ['-d', device], { stdio: 'ignore' });
      } catch {
        // Detached meanwhile.
      }
    }
  }
  settleUdev();
  if (errors.length > 0) throw errors[0];
}

function loopsOf(image: string): string[] {
  if (!fs.existsSync(image)) return [];
  return execFileSync('losetup', ['-n', '-O', 'NAME', '-j', image], { encoding: 'utf8' })
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean);
}

/** At most `limit` at once (two cores: mkfs is what costs). */
async function inParallel<T>(items: readonly T[], limit: number, work: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]);
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

/** GPT with three partitions, each an ext4 filesystem labelled `D<disk>P<n>`, made in the file. */
async function makeImages(): Promise<{ file: string; labels: string[] }[]> {
  const made = Array.from({ length: DISKS }, (_, d) => ({
    file: path.join(dir, `disk${d}.img`),
    labels: Array.from({ length: PARTITIONS }, (_, p) => `D${d}P${p + 1}`),
  }));
  const table = 'label: gpt\nsize=2M, type=L\nsize=2M, type=L\ntype=L\n';
  let layout: { start: number; size: number }[] = [];
  for (const { file } of made) {
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 8 * 1024 * 1024);
    // A file has no partitions to re-read: without these flags sfdisk syncs and sleeps 250 ms.
    execFileSync('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', file], { input: table });
    images.push(file);
  }
  layout = JSON.parse(execFileSync('sfdisk', ['--json', made[0].file], { encoding: 'utf8' })).partitiontable.partitions;
  const jobs = made.flatMap(({ file, labels }) => labels.map((label, p) => ({ file, label, at: layout[p] })));
  await inParallel(jobs, 2, ({ file, label, at }) =>
    run('mkfs.ext4', [
      '-q',
      '-F',
      '-L',
      label,
      '-E',
      `offset=${at.start * 512},nodiscard`,
      file,
      `${(at.size * 512) >> 10}k`,
    ]),
  );
  return made;
}

/** What blkid finds on these nodes now, probing them (not its cache). */
function blkidLabels(nodes: readonly string[]): Map<string, string | undefined> {
  let out = '';
  try {
    out = execFileSync('blkid', ['-p', '-o', 'export', ...nodes], { encoding: 'utf8' });
  } catch (error) {
    out = String((error as { stdout?: string }).stdout ?? ''); // rc 2 when one has nothing
  }
  const labels = new Map<string, string | undefined>(nodes.map((n) => [n, undefined]));
  for (const block of out.split('\n\n')) {
    const devname = /^DEVNAME=(.*)$/m.exec(block)?.[1];
    if (devname) labels.set(devname, /^LABEL=(.*)$/m.exec(block)?.[1]);
  }
  return labels;
}

/** Waits, waking on each event, until `check` holds; the error says what was still wrong. */
async function until(
  what: string,
  timeoutMs: number,
  check: () => boolean,
  wake: () => Promise<unknown>,
  wrong: () => unknown = () => '',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}: ${JSON.stringify(wrong())}`);
    }
    await wake();
  }
}

describe('a burst of 256 block devices with systemd-udevd running', () => {
  it('lists each exactly once, with the label blkid finds (never another), and none after they go', async () => {
    const source = new LocalHostSource({ hotplug: 'uevent' });
    const kernel = new Kernel().load(blockModule);
    kernel.registerSource(source);
    const manager = kernel.start();
    const events: Extract<DeviceEvent, { device: DeviceInfo }>[] = [];
    // Every event wakes the waits below: they wait for the manager's state, never for a time.
    let wake: () => void = () => {};
    const nextEvent = () =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 1000); // and look again now and then: settle is outside
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    let lastTree: HostTree | undefined;
    const treeSubscription = source.trees$.subscribe((tree) => (lastTree = tree));
    const faults: string[] = [];
    const subscription = manager.events$.subscribe((event) => {
      if ('device' in event) events.push(event);
      else if (event.type === 'driver-fault') faults.push(`${event.driverId}: ${event.error.message}`);
      wake();
    });
    const listed = () => {
      const counts = new Map<string, number>();
      for (const d of manager.list()) counts.set(d.port.portId, (counts.get(d.port.portId) ?? 0) + 1);
      return counts;
    };
    const labelOf = (name: string) => manager.get({ devclass: 'block', backend: 'dom0', portId: name })?.data.label;
    const eventsOf = (type: string, names: readonly string[]) => {
      const counts = new Map<string, number>();
      for (const e of events)
        if (e.type === type) counts.set(e.device.port.portId, (counts.get(e.device.port.portId) ?? 0) + 1);
      return names.filter((n) => counts.has(n)).map((n) => `${n} x${counts.get(n)}`);
    };
    /** What the source and udev hold for a partition listed with a wrong label. */
    const explain = (p: string) => {
      const r = lastTree?.devices().find((d) => d.properties.DEVNAME === `/dev/${p}`);
      const keys = ['ID_FS_TYPE', 'ID_FS_LABEL', 'ID_PART_TABLE_TYPE', 'DISKSEQ', 'MAJOR', 'MINOR'];
      const held = r ? keys.map((k) => `${k}=${r.properties[k]}`).join(' ') : 'no record';
      let udev = '';
      try {
        udev = execFileSync('udevadm', ['info', '--query=property', `/dev/${p}`], { encoding: 'utf8' })
          .split('\n')
          .filter((l) => /^(ID_FS_LABEL|ID_FS_TYPE|MINOR|DISKSEQ)=/.test(l))
          .join(' ');
      } catch (error) {
        udev = String(error);
      }
      return `source: ${held}; udev: ${udev}`;
    };
    /** Once udev has settled, devgate lists each of `wrote` once, with the label blkid finds: `wrote`'s. */
    const expectListedWithLabels = async (disks: readonly string[], wrote: ReadonlyMap<string, string>) => {
      const names = [...disks, ...wrote.keys()];
      await until(
        'all 256 are listed',
        120_000,
        () => names.every((n) => listed().has(n)),
        nextEvent,
        () => names.filter((n) => !listed().has(n)),
      );
      const listedAt = Date.now();
      settleUdev(120);
      const settledAt = Date.now();
      const truth = blkidLabels([...wrote.keys()].map((p) => `/dev/${p}`));
      await until(
        'every listed label is what blkid says',
        30_000,
        () => [...wrote.keys()].every((p) => labelOf(p) === truth.get(`/dev/${p}`)),
        nextEvent,
        () => {
          const stale = [...wrote.keys()].filter((p) => labelOf(p) !== truth.get(`/dev/${p}`));
          return {
            faults,
            stale: stale.length,
            e_g: stale
              .slice(0, 3)
              .map((p) => `${p} listed ${labelOf(p)}, blkid ${truth.get(`/dev/${p}`)}; ${explain(p)}`),
          };
        },
      );
      const counts = listed();
      expect(names.filter((n) => counts.get(n) !== 1)).toEqual([]);
      expect([...wrote].filter(([p, label]) => truth.get(`/dev/${p}`) !== label)).toEqual([]);
      expect([...wrote].filter(([p, label]) => labelOf(p) !== label)).toEqual([]);
      return { listedAt, settledAt, labelledAt: Date.now() };
    };
    /** Labels a partition showed since its last `added` (of those in `wrote`): none, or its own. */
    const wrongLabelsSeen = (wrote: ReadonlyMap<string, string>) => {
      const seen = new Map<string, Set<unknown>>();
      for (const e of events) {
        const name = e.device.port.portId;
        if (!wrote.has(name)) continue;
        if (e.type === 'added' || e.type === 'removed') seen.set(name, new Set());
        if (e.type !== 'removed') seen.get(name)?.add(e.device.data.label);
      }
      const wrong = [...wrote].flatMap(([p, label]) =>
        [...(seen.get(p) ?? [])].filter((l) => l !== undefined && l !== label).map((l) => `${p}: ${String(l)}`),
      );
      const unlabelledAtFirst = [...wrote.keys()].filter((p) => seen.get(p)?.has(undefined)).length;
      return { wrong, unlabelledAtFirst };
    };
    const attach = 'for i; do l=$(losetup -f --show "$i") || exit 1; echo "$l"; partx -a "$l" || exit 1; done';
    const detach =
      'for l; do n=0; until partx -d "$l"; do n=$((n+1)); [ $n -lt 100 ] || exit 1; udevadm settle; done; losetup -d "$l"; done';
    const partitionLabels = (disks: readonly string[], order: readonly { labels: string[] }[]) =>
      new Map(disks.flatMap((disk, d) => order[d].labels.map((label, p) => [`${disk}p${p + 1}`, label] as const)));

    const figures: string[] = [];
    try {
      expect(source.hotplug).toBe('uevent');
      expect(await source.whenListening(10_000)).toBe(true);
      let began = Date.now();
      const all = await makeImages();
      figures.push(`${DISKS} images with ${DISKS * PARTITIONS} filesystems made in ${Date.now() - began} ms`);

      // 1. All 64 attached and partitioned by one shell, while this process keeps reading events.
      events.length = 0;
      began = Date.now();
      let disks = (await run('sh', ['-c', attach, 'sh', ...all.map((m) => m.file)])).stdout.trim().split('\n');
      disks = disks.map((d) => path.basename(d));
      expect(disks).toHaveLength(DISKS);
      let wrote = partitionLabels(disks, all);
      expect(new Set([...disks, ...wrote.keys()]).size).toBe(DISKS * (PARTITIONS + 1));
      let at = await expectListedWithLabels(disks, wrote);
      // Added once each (a loop device that existed before, detached and hidden, is `changed` into view).
      expect(eventsOf('added', [...wrote.keys()])).toHaveLength(wrote.size);
      expect(eventsOf('added', [...disks, ...wrote.keys()]).filter((e) => !e.endsWith(' x1'))).toEqual([]);
      expect(eventsOf('removed', [...disks, ...wrote.keys()])).toEqual([]);
      let labels = wrongLabelsSeen(wrote);
      expect(labels.wrong).toEqual([]);
      figures.push(
        `burst: all 256 listed ${at.listedAt - began} ms after it began, udev settled at ${at.settledAt - began} ms, ` +
          `labels right at ${at.labelledAt - began} ms (${labels.unlabelledAtFirst} partitions first listed without one)`,
      );

      // 2. All 192 relabelled in place: udev's watch sends a `change`; its database follows later.
      events.length = 0;
      began = Date.now();
      const relabelled = new Map([...wrote].map(([p, label]) => [p, label.replace(/^D/, 'R')]));
      await run('sh', [
        '-c',
        'while [ $# -gt 0 ]; do e2label "/dev/$1" "$2" || exit 1; shift 2; done',
        'sh',
        ...[...relabelled].flat(),
      ]);
      at = await expectListedWithLabels(disks, relabelled);
      expect(eventsOf('added', [...disks, ...wrote.keys()])).toEqual([]);
      expect(eventsOf('removed', [...disks, ...wrote.keys()])).toEqual([]);
      figures.push(
        `relabel: udev settled ${at.settledAt - began} ms after it began, labels right at ${at.labelledAt - began} ms`,
      );

      // 3. All pulled, and plugged back at once in the reverse order, udev still busy with the removals.
      events.length = 0;
      began = Date.now();
      // e2label wrote the new labels into the images.
      const reversed = [...all]
        .reverse()
        .map((m) => ({ file: m.file, labels: m.labels.map((l) => l.replace(/^D/, 'R')) }));
      const swap = `${detach.replace('for l;', `for l in ${disks.map((d) => `/dev/${d}`).join(' ')};`)}; ${attach}`;
      disks = (await run('sh', ['-c', swap, 'sh', ...reversed.map((m) => m.file)])).stdout.trim().split('\n');
      disks = disks.map((d) => path.basename(d));
      expect(disks).toHaveLength(DISKS);
      wrote = partitionLabels(disks, reversed);
      // Nearly every loopNpM now has another label than before (the loop numbers are the kernel's
      // choice: the middle one, or a few where other loop devices came or went, may keep theirs).
      const kept = [...wrote].filter(([p, label]) => relabelled.get(p) === label).length;
      expect(kept).toBeLessThan(wrote.size / 4);
      at = await expectListedWithLabels(disks, wrote);
      labels = wrongLabelsSeen(wrote);
      expect(labels.wrong).toEqual([]);
      figures.push(
        `pulled and plugged back reversed (${wrote.size - kept} partitions with another label): all 256 listed ${at.listedAt - began} ms after it began, udev settled at ` +
          `${at.settledAt - began} ms, labels right at ${at.labelledAt - began} ms (${labels.unlabelledAtFirst} first without one)`,
      );

      // 4. All removed: partitions first, then the loop devices (an empty loop device is not listed).
      // Other tests may take the freed loop numbers at once: a name is ours until its first removal,
      // and a disk is ours while its backing file is one of our images.
      events.length = 0;
      began = Date.now();
      await run('sh', ['-c', detach, 'sh', ...disks.map((d) => `/dev/${d}`)]);
      const detachedMs = Date.now() - began;
      const ourImages = new Set(all.map((m) => m.file));
      const ourDisksListed = () =>
        manager.list().filter((d) => disks.includes(d.port.portId) && ourImages.has(String(d.data['backing-file'])));
      const ourPartitionEvents = (p: string) => {
        const mine: string[] = [];
        for (const e of events) {
          if (e.device.port.portId !== p) continue;
          mine.push(e.type);
          if (e.type === 'removed') break; // what comes after is another test's device of that name
        }
        return mine;
      };
      await until(
        'none of them is listed',
        120_000,
        () =>
          ourDisksListed().length === 0 && [...wrote.keys()].every((p) => ourPartitionEvents(p).includes('removed')),
        nextEvent,
        () => [
          ...ourDisksListed().map((d) => d.port.portId),
          ...[...wrote.keys()].filter((p) => !ourPartitionEvents(p).includes('removed')),
        ],
      );
      const goneMs = Date.now() - began;
      // Each partition removed once (its first removal ends what is ours), and not added on the way out.
      expect([...wrote.keys()].filter((p) => ourPartitionEvents(p).includes('added'))).toEqual([]);
      settleUdev(120);
      expect(ourDisksListed()).toEqual([]);
      figures.push(`removal: detached in ${detachedMs} ms, none listed at ${goneMs} ms`);
      expect(faults).toEqual([]);
    } finally {
      subscription.unsubscribe();
      treeSubscription.unsubscribe();
      kernel.dispose();
      console.log(figures.join('\n'));
    }
  });
});
