/**
 * util-linux's lsblk test dumps (`tests/ts/lsblk/dumps/*.tar.xz`): an xz tarball of a trimmed
 * copy of /sys and /proc under one top directory. It is extracted (symlinks kept) into a fresh
 * temporary directory and read with the ordinary sysfs reader, which reads attributes lazily, so
 * the directory lives until the result is disposed.
 *
 * The dump keeps only block-relevant files: no `uevent` files, no `subsystem` links and no
 * /sys/class. Before reading, the kernel-made files the reader needs are added, derived only from
 * what the dump recorded, and never replacing a recorded file:
 *  - every block device (the targets of sys/block/* and sys/dev/block/*, and the partition
 *    directories of disks) gets a `uevent` (MAJOR, MINOR and DEVNAME from `dev` or the
 *    sys/dev/block link name, DEVTYPE disk or partition, PARTN from `partition`), a `subsystem`
 *    link to class/block and a sys/class/block entry;
 *  - ancestors whose kind the kernel's naming makes certain get a `uevent` and `subsystem` link
 *    too, so drivers can walk up to them: PCI functions (`0000:00:1f.2`, bus pci, PCI_SLOT_NAME),
 *    SCSI hosts, targets and devices (`host0`, `target0:0:0`, `0:0:0:0`, bus scsi, DEVTYPE
 *    scsi_host/scsi_target/scsi_device) and NVMe controllers (`nvme/nvme0`, class nvme).
 *    Other directories (`ata1`, `pci0000:00`) stay plain directories, not devices.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Disposable, type HostTree } from '@devgate/core';
import { readHostTree, rootsUnder } from './sysfs-reader.js';
import { RECORDING_LIMITS, unreadable } from './recorded-device.js';

export interface SysfsTarball extends Disposable {
  readonly tree: HostTree;
  /** The extracted directory laid out like `/` (holds sys/, proc/, ...). */
  readonly root: string;
}

/** Bounds the unpacked size: the dumps are well under 1 MB; xz can expand a small file hugely. */
const MAX_UNPACKED_BYTES = 256 * 1024 * 1024;

export function loadSysfsTarball(file: string): SysfsTarball {
  let size: number;
  try {
    const stat = fs.statSync(file);
    if (!stat.isFile()) throw new Error('not a regular file');
    size = stat.size;
  } catch (error) {
    throw unreadable(file, (error as Error).message);
  }
  if (size > RECORDING_LIMITS.maxFileBytes)
    throw unreadable(file, `larger than ${RECORDING_LIMITS.maxFileBytes} bytes`);

  // realpath: the reader compares resolved link targets with <root>/sys/devices.
  const tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-sysfs-')));
  try {
    extract(file, tmp);
    const root = topDirectory(tmp, file);
    try {
      completeTrimmedSysfs(root);
    } catch (error) {
      throw unreadable(file, `cannot complete the sysfs tree: ${(error as Error).message}`);
    }
    const tree = readHostTree(rootsUnder(root));
    const disposable = Disposable.create(() => removeTree(tmp));
    return { tree, root, dispose: () => disposable.dispose() };
  } catch (error) {
    removeTree(tmp);
    throw error;
  }
}

/**
 * `xz -dc | tar -x`, with the unpacked stream bounded in memory first (the same result as
 * `tar -xJf`, which cannot be bounded). GNU tar drops leading `/` and refuses `..` member names,
 * and defers symlinks that point outside the directory until the end of extraction.
 */
function extract(file: string, dir: string): void {
  const xz = spawnSync('xz', ['-dc', '--', file], { maxBuffer: MAX_UNPACKED_BYTES });
  if ((xz.error as NodeJS.ErrnoException | undefined)?.code === 'ENOBUFS') {
    throw unreadable(file, `unpacks to more than ${MAX_UNPACKED_BYTES} bytes`);
  }
  if (xz.error || xz.status !== 0) {
    const reason = xz.error ? xz.error.message : xz.stderr.toString('utf8').trim() || `xz exited with ${xz.status}`;
    throw unreadable(file, `not an xz file: ${reason.slice(0, 200)}`);
  }
  const tar = spawnSync('tar', ['-x', '--no-same-owner', '--no-same-permissions', '-C', dir, '-f', '-'], {
    input: xz.stdout,
    maxBuffer: 1024 * 1024,
  });
  if (tar.error || tar.status !== 0) {
    const reason = tar.error
      ? tar.error.message
      : tar.stderr.toString('utf8').trim() || `tar exited with ${tar.status}`;
    throw unreadable(file, `not a tar archive: ${reason.slice(0, 200)}`);
  }
}

/** The one directory the dump unpacks to (`simple-nvme/`), or the directory itself if it holds sys/. */
function topDirectory(dir: string, file: string): string {
  if (isDirectory(path.join(dir, 'sys', 'devices'))) return dir;
  const entries = fs.readdirSync(dir).filter((name) => isDirectory(path.join(dir, name)));
  if (entries.length === 1 && isDirectory(path.join(dir, entries[0], 'sys', 'devices'))) {
    return path.join(dir, entries[0]);
  }
  throw unreadable(file, 'no top directory holding sys/devices');
}

/**
 * Adds the uevent files and links the dump left out (see the file comment) to the tree laid out
 * like `/` at `root`. Nothing is written outside `root`, whatever links the archive holds.
 */
export function completeTrimmedSysfs(root: string): void {
  const sys = path.join(root, 'sys');
  const devices = path.join(sys, 'devices');
  const blockDevices = new Map<string, string | undefined>(); // directory -> MAJ:MIN from a sys/dev name
  for (const name of readdir(path.join(sys, 'block'))) addTarget(blockDevices, devices, path.join(sys, 'block', name));
  for (const name of readdir(path.join(sys, 'dev', 'block'))) {
    addTarget(blockDevices, devices, path.join(sys, 'dev', 'block', name), /^\d+:\d+$/.test(name) ? name : undefined);
  }
  for (const disk of [...blockDevices.keys()]) {
    for (const name of readdir(disk)) {
      const child = path.join(disk, name);
      if (!blockDevices.has(child) && isFile(path.join(child, 'partition')) && !isSymlink(child)) {
        blockDevices.set(child, undefined);
      }
    }
  }

  const ancestors = new Set<string>();
  for (const [dir, linkName] of blockDevices) {
    const name = path.basename(dir);
    const dev = readText(path.join(dir, 'dev')) ?? linkName;
    const [major, minor] = dev && /^\d+:\d+$/.test(dev) ? dev.split(':') : [];
    const partn = readText(path.join(dir, 'partition'));
    const uevent = [
      ...(major !== undefined ? [`MAJOR=${major}`, `MINOR=${minor}`] : []),
      `DEVNAME=${name}`,
      `DEVTYPE=${partn !== undefined ? 'partition' : 'disk'}`,
      ...(partn !== undefined && /^\d+$/.test(partn) ? [`PARTN=${partn}`] : []),
    ];
    makeDevice(root, sys, dir, 'class/block', uevent);
    link(root, path.join(sys, 'class', 'block', name), dir);
    for (let up = path.dirname(dir); up.startsWith(devices + '/'); up = path.dirname(up)) ancestors.add(up);
  }

  for (const dir of ancestors) {
    if (blockDevices.has(dir)) continue;
    const name = path.basename(dir);
    if (/^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(name)) {
      makeDevice(root, sys, dir, 'bus/pci', [`PCI_SLOT_NAME=${name}`]);
      link(root, path.join(sys, 'bus', 'pci', 'devices', name), dir);
    } else if (/^host\d+$/.test(name)) {
      makeDevice(root, sys, dir, 'bus/scsi', ['DEVTYPE=scsi_host']);
    } else if (/^target\d+:\d+:\d+$/.test(name)) {
      makeDevice(root, sys, dir, 'bus/scsi', ['DEVTYPE=scsi_target']);
    } else if (/^\d+:\d+:\d+:\d+$/.test(name)) {
      makeDevice(root, sys, dir, 'bus/scsi', ['DEVTYPE=scsi_device']);
    } else if (/^nvme\d+$/.test(name) && path.basename(path.dirname(dir)) === 'nvme') {
      const dev = readText(path.join(dir, 'dev'));
      const [major, minor] = dev && /^\d+:\d+$/.test(dev) ? dev.split(':') : [];
      makeDevice(root, sys, dir, 'class/nvme', [
        ...(major !== undefined ? [`MAJOR=${major}`, `MINOR=${minor}`] : []),
        `DEVNAME=${name}`,
      ]);
    }
  }
}

/** Records the device directory a link points to, if it is inside sys/devices. */
function addTarget(found: Map<string, string | undefined>, devices: string, linkPath: string, majMin?: string): void {
  let target: string;
  try {
    target = fs.realpathSync(linkPath);
  } catch {
    return;
  }
  if (!target.startsWith(devices + '/') || !isDirectory(target)) return;
  if (!found.has(target) || found.get(target) === undefined) found.set(target, majMin);
}

/** Writes `uevent` and the `subsystem` link unless the dump has them. */
function makeDevice(root: string, sys: string, dir: string, subsystemDir: string, uevent: readonly string[]): void {
  try {
    // `wx` (O_EXCL) neither replaces a recorded file nor follows a planted symlink.
    fs.writeFileSync(path.join(dir, 'uevent'), uevent.map((line) => line + '\n').join(''), { flag: 'wx' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  link(root, path.join(dir, 'subsystem'), path.join(sys, subsystemDir));
}

/** A relative symlink, as sysfs has; an existing entry is kept. */
function link(root: string, at: string, target: string): void {
  if (isSymlink(at) || fs.existsSync(at)) return;
  mkdirInside(root, path.dirname(at));
  fs.symlinkSync(path.relative(path.dirname(at), target), at);
}

/** mkdir -p, refusing to go through a link the archive planted that leads out of `root`. */
function mkdirInside(root: string, dir: string): void {
  let existing = dir;
  while (!fs.existsSync(existing)) existing = path.dirname(existing);
  const real = fs.realpathSync(existing);
  if (real !== root && !real.startsWith(root + path.sep)) throw new Error(`${dir} leads outside the dump`);
  fs.mkdirSync(dir, { recursive: true });
}

/** rm -rf that also copes with directories the archive made read-only. */
function removeTree(dir: string): void {
  try {
    fs.rmSync(dir, { recursive: true, force: true });
  } catch {
    makeWritable(dir);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function makeWritable(dir: string): void {
  try {
    fs.chmodSync(dir, 0o700);
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) makeWritable(path.join(dir, entry.name));
    }
  } catch {
    // best effort; rmSync reports what is left
  }
}

function readText(file: string): string | undefined {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const buffer = Buffer.alloc(4096);
      const n = fs.readSync(fd, buffer, 0, buffer.length, 0);
      return buffer.subarray(0, n).toString('utf8').trim();
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

function readdir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

function isDirectory(file: string): boolean {
  try {
    return fs.statSync(file).isDirectory();
  } catch {
    return false;
  }
}

function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function isSymlink(file: string): boolean {
  try {
    return fs.lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}
