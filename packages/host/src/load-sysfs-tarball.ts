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
 *
 * The tarball is untrusted and devgated extracts it as root, and tar keeps FIFOs, device nodes and
 * links leading anywhere, which the reader would open. So before anything is read, only what a copy
 * of sysfs and procfs holds is kept (see confine()).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DevgateError, Disposable, type HostTree, sanitizeText } from '@devgate/core';
import { readHostTree, rootsUnder } from './sysfs-reader.js';
import { RECORDING_LIMITS, unreadable } from './recorded-device.js';

export interface SysfsTarball extends Disposable {
  readonly tree: HostTree;
  /** The extracted directory laid out like `/` (holds sys/, proc/, ...). */
  readonly root: string;
}

/**
 * What a tarball may unpack to; beyond any of them it is refused as a tar bomb. util-linux's dumps
 * hold about 550 entries and 750 KB; a copy of a whole machine's /sys about 50,000 entries.
 */
export interface SysfsTarballLimits {
  /** The unpacked tar stream, and the sum of the extracted files' sizes (a sparse member is small in the stream). */
  readonly maxUnpackedBytes: number;
  /** Directories, files and links: each one is an inode in the temporary directory. */
  readonly maxEntries: number;
  /** One file: a sysfs attribute is at most a page, a busy host's mountinfo about 1 MB; some are read whole. */
  readonly maxFileBytes: number;
}

export const SYSFS_TARBALL_LIMITS: SysfsTarballLimits = {
  maxUnpackedBytes: 256 * 1024 * 1024,
  maxEntries: 100_000,
  maxFileBytes: 16 * 1024 * 1024,
};

/** `tar -tv` output: a line per entry, each well under 4 KiB (names are escaped onto one line). */
const MAX_LISTING_BYTES = 64 * 1024 * 1024;
/** Links followed to resolve one link, as the kernel's MAXSYMLINKS. */
const MAX_LINK_HOPS = 40;

export function loadSysfsTarball(file: string, limits: SysfsTarballLimits = SYSFS_TARBALL_LIMITS): SysfsTarball {
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

  const made = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-sysfs-'));
  try {
    // realpath: the reader compares resolved link targets with <root>/sys/devices.
    const tmp = fs.realpathSync(made);
    extract(file, tmp, limits);
    confine(tmp, file, limits);
    const root = topDirectory(tmp, file);
    const tree = readHostTree(rootsUnder(root));
    const disposable = Disposable.create(() => removeTree(tmp));
    return { tree, root, dispose: () => disposable.dispose() };
  } catch (error) {
    try {
      removeTree(made);
    } catch {
      // the refusal matters more than a leftover directory
    }
    throw error;
  }
}

/**
 * `xz -dc | tar -x`, with the unpacked stream bounded in memory first (the same result as
 * `tar -xJf`, which cannot be bounded). GNU tar drops leading `/` and refuses `..` member names,
 * and defers symlinks that point outside the directory until the end of extraction. It has no
 * option to skip FIFOs or device nodes, so the listing is checked first: no such node is made.
 */
function extract(file: string, dir: string, limits: SysfsTarballLimits): void {
  const xz = spawnSync('xz', ['-dc', '--', file], { maxBuffer: limits.maxUnpackedBytes });
  if ((xz.error as NodeJS.ErrnoException | undefined)?.code === 'ENOBUFS') {
    throw unreadable(file, `unpacks to more than ${limits.maxUnpackedBytes} bytes`);
  }
  if (xz.error || xz.status !== 0) {
    throw unreadable(file, `not an xz file: ${failure(xz, 'xz')}`);
  }
  checkListing(file, xz.stdout, limits);
  const tar = spawnSync('tar', ['-x', '--no-same-owner', '--no-same-permissions', '-C', dir, '-f', '-'], {
    input: xz.stdout,
    maxBuffer: 1024 * 1024,
  });
  if (tar.error || tar.status !== 0) throw unreadable(file, `cannot unpack: ${failure(tar, 'tar')}`);
}

/** What `tar -tv` shows first for the entry types a copy of sysfs or procfs never holds. */
const SPECIAL_TYPES: Readonly<Record<string, string>> = {
  p: 'a FIFO',
  c: 'a character device',
  b: 'a block device',
  s: 'a socket',
};

/** Counts the entries and refuses special files before anything is extracted. */
function checkListing(file: string, stream: Buffer, limits: SysfsTarballLimits): void {
  const list = spawnSync('tar', ['-tv', '--quoting-style=escape', '-f', '-'], {
    input: stream,
    maxBuffer: MAX_LISTING_BYTES,
  });
  if ((list.error as NodeJS.ErrnoException | undefined)?.code === 'ENOBUFS') {
    throw unreadable(file, `more than ${limits.maxEntries} entries`);
  }
  if (list.error || list.status !== 0) throw unreadable(file, `not a tar archive: ${failure(list, 'tar')}`);
  const lines = list.stdout.toString('utf8').split('\n');
  if (lines.length - 1 > limits.maxEntries) throw unreadable(file, `more than ${limits.maxEntries} entries`);
  for (const line of lines) {
    const kind = SPECIAL_TYPES[line[0]];
    // `prw-r--r-- root/root 0 2026-12-02 01:49 dump/sys/.../dev`
    if (kind) throw notSysfs(file, kind, /^\S+ \S+ +\S+ \S+ \S+ (.*)$/.exec(line)?.[1] ?? '?');
  }
}

/**
 * Keeps only what a copy of sysfs and procfs holds: directories, regular files, and links that stay
 * inside `root`. The listing was checked, but what tar made is what the reader opens.
 *
 * A FIFO, socket or device node refuses the whole tarball: sysfs and procfs have none (a copy of them
 * is plain files), and an unprivileged tar cannot make device nodes, so devgated (root) and the CLI
 * refuse the same files. A link leading out is removed instead: it then reads as absent, as the links
 * a trimmed dump did not keep do, and honest dumps never hold one (their links are relative).
 */
function confine(root: string, file: string, limits: SysfsTarballLimits): void {
  let entries = 0;
  let bytes = 0;
  const links: string[] = [];
  const pending = [root];
  try {
    while (pending.length > 0) {
      const dir = pending.pop()!;
      // The archive sets directory modes: one tar left unlistable could still be opened by name.
      const mode = fs.lstatSync(dir).mode & 0o7777;
      if ((mode & 0o700) !== 0o700) fs.chmodSync(dir, mode | 0o700);
      for (const name of fs.readdirSync(dir)) {
        if (++entries > limits.maxEntries) throw unreadable(file, `more than ${limits.maxEntries} entries`);
        const entry = path.join(dir, name);
        const stat = fs.lstatSync(entry);
        if (stat.isDirectory()) {
          pending.push(entry);
        } else if (stat.isSymbolicLink()) {
          links.push(entry);
        } else if (stat.isFile()) {
          if (stat.size > limits.maxFileBytes) {
            throw unreadable(file, `${shown(root, entry)} is larger than ${limits.maxFileBytes} bytes`);
          }
          bytes += stat.size;
          if (bytes > limits.maxUnpackedBytes) {
            throw unreadable(file, `unpacks to more than ${limits.maxUnpackedBytes} bytes`);
          }
        } else {
          throw notSysfs(file, specialKind(stat), shown(root, entry));
        }
      }
    }
    // Resolved before any is removed, so the order does not matter.
    const leaving = links.filter((link) => !isInside(root, resolveLink(link)));
    for (const link of leaving) fs.unlinkSync(link);
  } catch (error) {
    if (error instanceof DevgateError) throw error;
    throw unreadable(file, `cannot check what it unpacked: ${(error as Error).message}`);
  }
}

/**
 * Where a link leads, following links as the kernel does: a real path, or the real directory where
 * a missing name would be (a dangling link leads there once someone makes that name). Undefined for
 * a loop. The link's own directory is real: the walk reached it through directories only.
 */
function resolveLink(link: string): string | undefined {
  let at = path.dirname(link);
  let rest = [path.basename(link)];
  let hops = 0;
  while (rest.length > 0) {
    const part = rest.shift()!;
    if (part === '' || part === '.') continue;
    // `..` applies to the real directory reached so far, as in the kernel.
    if (part === '..') {
      at = path.dirname(at);
      continue;
    }
    const next = path.join(at, part);
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(next);
    } catch {
      return at; // missing, or not a directory: resolution stops here
    }
    if (!stat.isSymbolicLink()) {
      at = next;
      continue;
    }
    if (++hops > MAX_LINK_HOPS) return undefined;
    const target = fs.readlinkSync(next);
    if (target.startsWith('/')) at = '/';
    rest = [...target.split('/'), ...rest];
  }
  return at;
}

function isInside(root: string, file: string | undefined): boolean {
  return file !== undefined && (file === root || file.startsWith(root + path.sep));
}

function notSysfs(file: string, kind: string, entry: string): Error {
  return unreadable(file, `holds ${kind} (${entry}): a copy of sysfs holds only directories, files and links`);
}

function specialKind(stat: fs.Stats): string {
  if (stat.isFIFO()) return 'a FIFO';
  if (stat.isCharacterDevice()) return 'a character device';
  if (stat.isBlockDevice()) return 'a block device';
  if (stat.isSocket()) return 'a socket';
  return 'a special file';
}

/** An entry's name in the archive, for a message: its names are anyone's. */
function shown(root: string, entry: string): string {
  return sanitizeText(path.relative(root, entry), 200) ?? '?';
}

/** Why a child failed, from its error or stderr (tar's stderr quotes member names: sanitized). */
function failure(child: ReturnType<typeof spawnSync>, name: string): string {
  if (child.error) return child.error.message;
  return sanitizeText(child.stderr.toString('utf8'), 200) ?? `${name} exited with ${child.status}`;
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
