import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { udevdRunning } from './loop-device.js';

const UDEVD_PATHS = ['/lib/systemd/systemd-udevd', '/usr/lib/systemd/systemd-udevd'];

export interface UdevdHandle {
  /** Whether this process started it (else one was running already and is left alone). */
  readonly started: boolean;
  /**
   * Stops the udevd this process started, by its PID, and waits for it to exit; removes /run/udev
   * if it was not there before (a stale database would be read as a live one); else nothing.
   */
  stop(timeoutMs?: number): Promise<void>;
}

/**
 * A running systemd-udevd, as on every real host: the one already running, or one started here
 * (in the foreground, as this process's child) and sent `trigger --action=add` for block devices
 * so its database covers what exists. Fails, saying why, when none can be started.
 */
export async function ensureUdevd(timeoutMs = 15_000): Promise<UdevdHandle> {
  if (udevdRunning()) return { started: false, stop: async () => {} };
  const binary = UDEVD_PATHS.find((p) => fs.existsSync(p));
  if (!binary) throw new Error(`systemd-udevd not found (${UDEVD_PATHS.join(', ')}): install the udev package`);
  const hadRunUdev = fs.existsSync('/run/udev');
  const child: ChildProcess = spawn(binary, [], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-4000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let gone = false;
  void exited.then(() => (gone = true));
  const stop = async (stopTimeoutMs = 10_000) => {
    if (!gone) {
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), stopTimeoutMs)));
      if ((await Promise.race([exited, late])) === 'late') {
        child.kill('SIGKILL');
        await exited;
      }
      clearTimeout(timer);
    }
    if (!hadRunUdev) fs.rmSync('/run/udev', { recursive: true, force: true });
  };
  // Ready once it answers on its control socket (`control --ping` waits up to its own timeout).
  const deadline = Date.now() + timeoutMs;
  while (!udevdRunning()) {
    if (gone || Date.now() > deadline) {
      await stop();
      throw new Error(
        `systemd-udevd (${binary}) did not start within ${timeoutMs} ms: ${stderr.trim() || 'no output'}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  execFileSync('udevadm', ['trigger', '--action=add', '--subsystem-match=block']);
  execFileSync('udevadm', ['settle', '--timeout=30']);
  return { started: true, stop };
}
