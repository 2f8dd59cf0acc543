/**
 * Nothing a guest made outlives the process that owns it, however that process ends:
 *
 * - disposed (the normal case, also after a failed test's afterAll): QMP `quit`, then its directory
 *   (sockets, console log, images, overlays) is removed;
 * - the process exits without disposing (an uncaught error, process.exit): an 'exit' hook kills
 *   every live guest's QEMU and removes its directory, synchronously;
 * - the process is killed (SIGKILL, OOM): QEMU was started under `setpriv --pdeathsig KILL`, so the
 *   kernel kills it with its parent. QEMU 7.2 has no option of its own for that (`-run-with
 *   exit-with-parent=on` came in 9.1), and -daemonize would cut the tie. The directory stays
 *   behind, with an owner.json naming the dead owner: the next guest booted anywhere on the machine
 *   sweeps such directories (and kills a QEMU still found in one, if pdeathsig was not available).
 *
 * Guests the CLI starts (`devgate lab up --os`) are meant to outlive it: they have no owner and no
 * pdeathsig, and `devgate lab down` stops them.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface Owner {
  readonly pid: number;
  /** /proc/<pid>/stat field 22: with the pid, names one process even after pid reuse. */
  readonly startTime: string;
}

/** Where test guests' directories go: `$DEVGATE_LAB_RUN`, else `<tmpdir>/devgate-lab`. */
export function labRunRoot(env: NodeJS.ProcessEnv = process.env): string {
  return env['DEVGATE_LAB_RUN'] || path.join(os.tmpdir(), 'devgate-lab');
}

export function processStartTime(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

export function currentOwner(): Owner {
  return { pid: process.pid, startTime: processStartTime(process.pid) ?? '' };
}

/** The owner still runs: same pid, same start time, and not a zombie (killed, not yet reaped). */
export function isOwnerAlive(owner: Owner): boolean {
  return processStartTime(owner.pid) === owner.startTime && !isZombie(owner.pid);
}

function isZombie(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return true;
  }
}

/** True if `pid` is a live, non-zombie process whose command line contains `marker` (its directory). */
export function isGuestQemu(pid: number, marker: string): boolean {
  try {
    if (isZombie(pid)) return false;
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
  } catch {
    return false;
  }
}

export function readPid(file: string): number | undefined {
  try {
    const pid = Number.parseInt(fs.readFileSync(file, 'utf8').trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Removes directories under `root` whose owner is gone, killing a QEMU still running in one. */
export function sweepStaleGuests(root: string = labRunRoot()): string[] {
  let entries: string[];
  try {
    entries = fs.readdirSync(root);
  } catch {
    return [];
  }
  const swept: string[] = [];
  for (const entry of entries) {
    const dir = path.join(root, entry);
    let owner: Owner;
    try {
      owner = JSON.parse(fs.readFileSync(path.join(dir, 'owner.json'), 'utf8')) as Owner;
    } catch {
      continue; // not a guest directory, or one being created
    }
    if (isOwnerAlive(owner)) continue;
    const pid = readPid(path.join(dir, 'qemu.pid'));
    if (pid !== undefined && isGuestQemu(pid, dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
    swept.push(dir);
  }
  return swept;
}

// -- the 'exit' hook

interface LiveGuest {
  readonly pid: () => number | undefined;
  readonly dir: string;
}

const live = new Set<LiveGuest>();
let hooked = false;

/** Registers a guest to be killed and removed if the process exits while it runs; returns the undo. */
export function killOnExit(guest: LiveGuest): () => void {
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const g of live) {
        const pid = g.pid();
        if (pid !== undefined && isGuestQemu(pid, g.dir)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone meanwhile
          }
        }
        fs.rmSync(g.dir, { recursive: true, force: true });
      }
    });
  }
  live.add(guest);
  return () => live.delete(guest);
}
