import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';

/** A pseudo-terminal held open for a test: a real tty node anything can open as a serial port. */
export interface Pty {
  /** `/dev/pts/N` */
  readonly path: string;
  /** Its node's `major:minor` (136:N). */
  readonly majorMinor: string;
  close(): void;
}

const open = new Set<ChildProcess>();

/**
 * Opens a pty with util-linux's `script` (its child holds the terminal side and sleeps); closing
 * it ends both. Every pty left open is closed when the test process exits.
 */
export async function openPty(timeoutMs = 10_000): Promise<Pty> {
  // Its own process group: closing ends script and the sleeping shell together.
  const child = spawn('script', ['-q', '-c', 'tty; exec sleep 3600', '/dev/null'], {
    stdio: ['pipe', 'pipe', 'ignore'],
    detached: true,
  });
  open.add(child);
  const close = () => {
    open.delete(child);
    child.stdin?.destroy();
    child.stdout?.destroy();
    if (child.exitCode === null && child.pid !== undefined) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    child.unref();
  };
  try {
    const ptyPath = await new Promise<string>((resolve, reject) => {
      let output = '';
      const timer = setTimeout(
        () => reject(new Error(`script printed no tty within ${timeoutMs} ms: ${output}`)),
        timeoutMs,
      );
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`script exited (${code}) before printing its tty: ${output}`)));
      child.stdout!.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        const found = /\/dev\/pts\/\d+/.exec(output);
        if (found) {
          clearTimeout(timer);
          resolve(found[0]);
        }
      });
    });
    const { rdev } = fs.statSync(ptyPath, { bigint: true });
    const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
    const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
    return { path: ptyPath, majorMinor: `${major}:${minor}`, close };
  } catch (error) {
    close();
    throw error;
  }
}

process.once('exit', () => {
  for (const child of open) if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
});
