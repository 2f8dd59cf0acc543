import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RecordedDevice } from '@devgate/host';

export interface LoopPartitionSpec {
  readonly sizeMiB?: number; // the last one may take the rest
  readonly name?: string;
  readonly label?: string; // formats it ext4 with this label
}

export interface LoopDiskSpec {
  readonly sizeMiB: number;
  readonly partitions?: readonly LoopPartitionSpec[];
  readonly readOnly?: boolean;
  /** Label of an ext4 filesystem on the whole disk (only without partitions). */
  readonly label?: string;
}

export interface LoopDisk {
  /** `/dev/loopN`, whatever N the kernel chose. */
  readonly device: string;
  /** `loopN` */
  readonly name: string;
  /** `loopNp1`, ... */
  readonly partitions: readonly string[];
  readonly image: string;
  dispose(): void;
}

const live = new Set<LoopDisk>();

/**
 * A real kernel block device backed by a sparse file, with a GPT and partitions. This kernel has
 * no partition parsers, so partitions are added with `partx -a` (BLKPG). Needs root, util-linux,
 * fdisk (sfdisk) and e2fsprogs. Never assume which /dev/loopN is returned.
 *
 * Where a udevd runs (as on real hosts), this returns once udev has processed the new devices:
 * its blkid probes hold them open for a moment, and its database and by-label links are written.
 * Filesystems are made in the image before it is attached, so udev's first probe sees them.
 */
export function createLoopDisk(spec: LoopDiskSpec): LoopDisk {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-loop-'));
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, spec.sizeMiB * 1024 * 1024);
  const parts = spec.partitions ?? [];
  // Filesystems are made in the image before it becomes a (possibly read-only) loop device.
  try {
    if (parts.length > 0) {
      const table = ['label: gpt', ...parts.map((p, i) => partitionLine(p, i))].join('\n') + '\n';
      // A file has no partitions to re-read: without these flags sfdisk syncs and sleeps 250 ms.
      execFileSync('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', image], { input: table });
      const layout = partitionLayout(image);
      parts.forEach((p, i) => p.label && mkfs(image, p.label, layout[i]));
    } else if (spec.label) mkfs(image, spec.label);
  } catch (error) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  let device = '';
  let disk: LoopDisk | undefined;
  try {
    device = execFileSync('losetup', ['-f', '--show', ...(spec.readOnly ? ['-r'] : []), image], {
      encoding: 'utf8',
    }).trim();
    const name = path.basename(device);
    // The kernel names the file by its real path.
    const backing = fs.realpathSync(image);
    // A loop device detached while a partition was busy keeps that partition: clear leftovers first.
    removePartitions(device);
    if (parts.length > 0) execFileSync('partx', ['-a', device]);
    const partitions = parts.map((_p, i) => `${name}p${i + 1}`);
    disk = {
      device,
      name,
      partitions,
      image,
      dispose: () => {
        live.delete(disk!);
        try {
          // Detached already (by whoever), its number may be another's disk now: that one is left alone.
          if (backingFile(name) === backing) detachQuietly(device);
        } finally {
          fs.rmSync(dir, { recursive: true, force: true });
        }
      },
    };
    live.add(disk);
    settleUdev();
    return disk;
  } catch (error) {
    if (disk) disk.dispose();
    else {
      try {
        if (device) detachQuietly(device);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
    throw error;
  }
}

/** Detaches every loop disk this process created and has not disposed (for afterAll). */
export function disposeAllLoopDisks(): void {
  const errors: unknown[] = [];
  for (const disk of [...live]) {
    try {
      disk.dispose();
    } catch (error) {
      errors.push(error);
    }
  }
  if (errors.length > 0) throw errors[0];
}

function partitionLine(p: LoopPartitionSpec, i: number): string {
  const fields = [p.sizeMiB ? `size=${p.sizeMiB}M` : undefined, 'type=L', `name=${p.name ?? `p${i + 1}`}`];
  return fields.filter(Boolean).join(', ');
}

/** Where each partition is in the image, in bytes (sfdisk counts 512-byte sectors). */
function partitionLayout(image: string): { offset: number; size: number }[] {
  const dump = JSON.parse(execFileSync('sfdisk', ['--json', image], { encoding: 'utf8' })) as {
    partitiontable: { sectorsize?: number; partitions: { start: number; size: number }[] };
  };
  const sector = dump.partitiontable.sectorsize ?? 512;
  return dump.partitiontable.partitions.map((p) => ({ offset: p.start * sector, size: p.size * sector }));
}

/** An ext4 filesystem in the image file, at a partition's place or over all of it. */
function mkfs(image: string, label: string, at?: { offset: number; size: number }): void {
  const placed = at ? ['-E', `offset=${at.offset},nodiscard`, image, `${Math.floor(at.size / 1024)}k`] : [image];
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', label, ...placed]);
}

/** Whether a udevd answers on this host (real hosts run one; bare CI machines may not). */
export function udevdRunning(): boolean {
  try {
    execFileSync('udevadm', ['control', '--ping', '--timeout=2'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Waits until a running udevd has processed every event so far (its probes of new devices, its
 * database, its symlinks); returns at once where no udevd runs. Fails after `timeoutS`.
 */
export function settleUdev(timeoutS = 30): void {
  if (!udevdRunning()) return;
  execFileSync('udevadm', ['settle', `--timeout=${timeoutS}`], { stdio: 'ignore' });
}

/**
 * Deletes the kernel's partitions of a loop device. A partition that something holds open for a
 * moment (udev's blkid probe) refuses with EBUSY: this waits for udev to finish (or, without
 * udevd, a moment) and tries again, and fails, naming what is left, after `timeoutMs`.
 */
export function removePartitions(device: string, timeoutMs = 10_000): void {
  const name = path.basename(device);
  const sysDir = `/sys/block/${name}`;
  const remaining = () => {
    try {
      return fs.readdirSync(sysDir).filter((entry) => entry.startsWith(`${name}p`));
    } catch {
      return [];
    }
  };
  const deadline = Date.now() + timeoutMs;
  for (let left = remaining(); left.length > 0; left = remaining()) {
    let error = '';
    try {
      execFileSync('partx', ['-d', device], { stdio: ['ignore', 'ignore', 'pipe'] });
      continue;
    } catch (e) {
      error = String((e as { stderr?: Buffer }).stderr ?? e).trim();
    }
    if (Date.now() > deadline) {
      throw new Error(`partx -d ${device}: ${left.join(' ')} still there after ${timeoutMs} ms (${error})`);
    }
    if (udevdRunning()) settleUdev(5);
    else Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
  }
}

/** The file behind a loop device, as the kernel names it; undefined when it has none. */
function backingFile(name: string): string | undefined {
  try {
    return fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** Partitions first (else a busy one stays behind as a stale `loopNpM`), then the loop device. */
function detachQuietly(device: string): void {
  try {
    removePartitions(device);
  } finally {
    try {
      execFileSync('losetup', ['-d', device], { stdio: 'ignore' });
    } catch {
      // Already detached.
    }
    settleUdev();
  }
}

/**
 * A block device record named like a real loop device, for a host tree on disk: QEMU can open the
 * real `/dev/loopN` while the test decides when the tree reports it plugged or pulled. (A loop device
 * QEMU holds open cannot really vanish, so this is how surprise removal is tested.)
 */
export function loopStickRecord(name: string, properties: Record<string, string> = {}): RecordedDevice {
  const [major, minor] = fs.readFileSync(`/sys/block/${name}/dev`, 'utf8').trim().split(':');
  const sectors = fs.readFileSync(`/sys/block/${name}/size`, 'utf8').trim();
  return new RecordedDevice({
    devpath: `/devices/virtual/block/${name}`,
    subsystem: 'block',
    properties: { DEVNAME: `/dev/${name}`, DEVTYPE: 'disk', MAJOR: major, MINOR: minor, ...properties },
    attributes: { size: sectors, ro: '0', removable: '1' },
  });
}
