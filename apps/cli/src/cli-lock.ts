import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Errors } from '@devgate/core';

/**
 * Without devgated, each command runs its own kernel; this lock makes commands that talk to the
 * hypervisors take turns, so two `qvm-block attach` runs cannot both see a device free and both
 * attach it (and a QMP socket serves one client at a time anyway).
 *
 * A real lock, flock(2), taken with util-linux's flock(1) on a descriptor this process passes to it
 * (ADR 0006): the lock belongs to the open file description, which flock(1) shares as its fd 3, so
 * it stays held by this process's descriptor after flock(1) exits, and the kernel releases it when
 * that descriptor is closed: when the work is done, or the moment this process dies, however it
 * dies (SIGKILL included). No pid file, nothing to clean up, no stale lock.
 *
 * `readOnly`: a command that changes nothing (a listing) takes turns only with a lock file that is
 * there; it creates no file or directory for it.
 */
export async function withCliLock<T>(
  lockPath: string,
  work: () => Promise<T>,
  timeoutMs = 15_000,
  { readOnly = false }: { readonly readOnly?: boolean } = {},
): Promise<T> {
  const fd = readOnly ? openExistingLockFile(lockPath) : openLockFile(lockPath);
  // A command that changes nothing creates nothing: with no lock file, no one holds the lock.
  if (fd === undefined) return work();
  try {
    await flock(fd, lockPath, timeoutMs);
    return await work();
  } finally {
    // The last descriptor of the description: the lock goes with it.
    fs.closeSync(fd);
  }
}

/** Opened close-on-exec (as libuv opens every file), so only flock(1) is handed the descriptor. */
function openLockFile(lockPath: string): number {
  for (;;) {
    try {
      return fs.openSync(lockPath, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') fs.mkdirSync(path.dirname(lockPath), { recursive: true });
      else if (code === 'EISDIR') removeOldLockDirectory(lockPath);
      else throw Errors.lockFailed({ file: lockPath, reason: (error as Error).message });
    }
  }
}

/** The lock file if there is one (flock(2) needs no write access); undefined for none, or a directory. */
function openExistingLockFile(lockPath: string): number | undefined {
  let fd: number;
  try {
    fd = fs.openSync(lockPath, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw Errors.lockFailed({ file: lockPath, reason: (error as Error).message });
  }
  if (fs.fstatSync(fd).isFile()) return fd;
  fs.closeSync(fd);
  return undefined;
}

/**
 * An older devgate's lock was a directory holding only its owner's `pid` file. Only such a
 * directory, whose owner is gone, is removed; anything else at the lock path is not devgate's to delete.
 */
function removeOldLockDirectory(lockPath: string): void {
  const pidFile = path.join(lockPath, 'pid');
  let pid: number;
  try {
    const entries = fs.readdirSync(lockPath);
    pid = entries.length === 1 && entries[0] === 'pid' ? Number(fs.readFileSync(pidFile, 'utf8')) : NaN;
  } catch {
    pid = NaN;
  }
  if (!Number.isSafeInteger(pid) || pid <= 0) {
    throw Errors.lockFailed({ file: lockPath, reason: 'a directory devgate did not make is in the way' });
  }
  if (processExists(pid)) throw Errors.busy({ what: lockPath });
  fs.rmSync(pidFile, { force: true });
  fs.rmdirSync(lockPath);
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** An exit status of flock(1) that means "held by another" (-E), apart from its own errors (1). */
const CONFLICT = 75;

function flock(fd: number, lockPath: string, timeoutMs: number): Promise<void> {
  const wait = timeoutMs > 0 ? ['--wait', String(timeoutMs / 1000)] : ['--nonblock'];
  return new Promise((resolve, reject) => {
    const child = spawn('flock', ['--exclusive', ...wait, '--conflict-exit-code', String(CONFLICT), '3'], {
      stdio: ['ignore', 'ignore', 'pipe', fd],
    });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', (error) => reject(Errors.lockFailed({ file: lockPath, reason: `flock: ${error.message}` })));
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else if (code === CONFLICT) reject(Errors.busy({ what: lockPath }));
      else reject(Errors.lockFailed({ file: lockPath, reason: stderr.trim() || `flock ended with ${code ?? signal}` }));
    });
  });
}
