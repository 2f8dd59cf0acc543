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
 */
export function createLoopDisk(spec: LoopDiskSpec): LoopDisk {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-loop-'));
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, spec.sizeMiB * 1024 * 1024);
  const parts = spec.partitions ?? [];
  if (parts.length > 0) {
    const table = ['label: gpt', ...parts.map((p, i) => partitionLine(p, i))].join('\n') + '\n';
    execFileSync('sfdisk', ['--quiet', image], { input: table });
  }
  // Filesystems are made on the image before it becomes a (possibly read-only) loop device.
  let device = '';
  let disk: LoopDisk | undefined;
  try {
    device = execFileSync('losetup', ['-f', '--show', ...(spec.readOnly ? ['-r'] : []), image], {
      encoding: 'utf8',
    }).trim();
    const name = path.basename(device);
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
        detachQuietly(device);
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
    live.add(disk);
    if (!spec.readOnly) {
      parts.forEach((p, i) => p.label && mkfs(`/dev/${partitions[i]}`, p.label));
      if (spec.label && parts.length === 0) mkfs(device, spec.label);
    }
    return disk;
  } catch (error) {
    if (disk) disk.dispose();
    else {
      if (device) detachQuietly(device);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    throw error;
  }
}

/** Detaches every loop disk this process created and has not disposed (for afterAll). */
export function disposeAllLoopDisks(): void {
  for (const disk of [...live]) disk.dispose();
}

function partitionLine(p: LoopPartitionSpec, i: number): string {
  const fields = [p.sizeMiB ? `size=${p.sizeMiB}M` : undefined, 'type=L', `name=${p.name ?? `p${i + 1}`}`];
  return fields.filter(Boolean).join(', ');
}

function mkfs(node: string, label: string): void {
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', label, node]);
}

/**
 * Deletes the kernel's partitions of a loop device. A partition that something holds open for a
 * moment (a blkid probe) refuses with EBUSY, so this tries again for a while.
 */
export function removePartitions(device: string, timeoutMs = 3000): void {
  const sysDir = `/sys/block/${path.basename(device)}`;
  const remaining = () => fs.readdirSync(sysDir).filter((entry) => entry.startsWith(`${path.basename(device)}p`));
  const deadline = Date.now() + timeoutMs;
  while (fs.existsSync(sysDir) && remaining().length > 0) {
    try {
      execFileSync('partx', ['-d', device], { stdio: 'ignore' });
    } catch {
      if (Date.now() > deadline) return;
      execFileSync('sleep', ['0.05']);
    }
  }
}

function detachQuietly(device: string): void {
  removePartitions(device);
  try {
    execFileSync('losetup', ['-d', device], { stdio: 'ignore' });
  } catch {
    // Already detached.
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

