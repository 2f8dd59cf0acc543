import * as fs from 'node:fs';
import { Errors } from '@devgate/core';

/**
 * Without devgated, each command runs its own kernel; this lock makes commands that talk to the
 * hypervisors take turns, so two `qvm-block attach` runs cannot both see a device free and both
 * attach it (and a QMP socket serves one client at a time anyway). A directory is created
 * atomically; it holds the owner's pid so a lock left by a killed command is taken over.
 */
export async function withCliLock<T>(lockPath: string, work: () => Promise<T>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      fs.mkdirSync(lockPath);
      fs.writeFileSync(`${lockPath}/pid`, String(process.pid));
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        fs.mkdirSync(lockPath.slice(0, lockPath.lastIndexOf('/')), { recursive: true });
        continue;
      }
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      if (ownerIsGone(lockPath)) {
        fs.rmSync(lockPath, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) {
        throw Errors.busy({ what: lockPath });
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
  try {
    return await work();
  } finally {
    fs.rmSync(lockPath, { recursive: true, force: true });
  }
}

function ownerIsGone(lockPath: string): boolean {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(`${lockPath}/pid`, 'utf8'));
  } catch {
    // Created but not yet written: give its owner a moment.
    const age = Date.now() - fs.statSync(lockPath, { throwIfNoEntry: false })!.mtimeMs;
    return Number.isFinite(age) && age > 2_000;
  }
  if (!Number.isInteger(pid) || pid <= 0) return true;
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
