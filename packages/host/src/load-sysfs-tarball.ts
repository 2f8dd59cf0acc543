/**
 * util-linux's lsblk test dumps (`tests/ts/lsblk/dumps/*.tar.xz`): an xz tarball of a trimmed
 * copy of /sys and /proc under one top directory. It is extracted (symlinks kept) into a fresh
 * temporary directory and read with the ordinary sysfs reader, which reads attributes lazily, so
 * the directory lives until the result is disposed.
 *
 * The dump keeps only block-relevant files: no `uevent` files, no `subsystem` links and no
 * /sys/class. The reader knows that layout (as it does for `--sysroot` of such a dump; see
 * trimmed-sysfs.ts) and derives what the kernel would have written in memory: nothing is written
 * into the extracted tree.
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

function isDirectory(file: string): boolean {
  try {
    return fs.statSync(file).isDirectory();
  } catch {
    return false;
  }
}
