/**
 * Lab VMs with an OS, for users (`devgate lab up --os NAME`, `lab exec`, `lab plug`, `lab unplug`,
 * `lab wait`). Such a guest is a lab domain like the paused ones of @devgate/backend-qemu's lab.ts:
 * registered in the same domain registry with `lab: true`, its devgate QMP socket, pidfile and log
 * named as lab.ts names them (`<state dir>/<name>.qmp|.pid|.log`), so `devgate lab down`, `lab
 * list` and every attach command treat it as any lab VM. What only a guest has (its agent socket,
 * the lab's own QMP monitor, console log, stick images) is in `<state dir>/<name>.guest/`; the
 * `lab down` of the CLI removes that directory after stopping the guest.
 *
 * These guests outlive the command that started them (QEMU runs detached); each later command
 * connects to the guest's agent and lab monitor for as long as it runs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Errors, isValidDomainName } from '@devgate/core';
import {
  type DomainEntry,
  defaultLabStateDir,
  defaultRegistryFile,
  getDomain,
  type LabOptions,
  labDown,
  readLabRegistry,
  updateRegistry,
} from '@devgate/backend-qemu';
import { type AcceleratorChoice } from './accelerator.js';
import { type ExecOptions } from './agent-channel.js';
import { GuestErrors } from './guest-errors.js';
import { type Guest, type GuestSession, bootGuest, openGuestSession } from './guest.js';
import { type DeviceSpec } from './lab-devices.js';
import { isGuestQemu, readPid } from './reaper.js';

export interface OsLabOptions {
  /** Default: `defaultRegistryFile()`. */
  readonly registryFile?: string;
  /** How the registry is read, as for paused lab VMs (LabOptions' `registryReader`). */
  readonly registryReader?: LabOptions['registryReader'];
  /** Default: `defaultLabStateDir(registryFile)`, as for paused lab VMs. */
  readonly stateDir?: string;
  readonly devices?: readonly DeviceSpec[];
  readonly accel?: AcceleratorChoice;
  readonly memoryMb?: number;
  readonly iommu?: boolean;
  readonly bootTimeoutMs?: number;
}

export interface OsLabDomain {
  readonly name: string;
  readonly pid: number;
  /** The QMP socket in the registry (devgate's). */
  readonly socket: string;
  readonly accel: string;
  readonly bootMs: number;
}

/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

/** The directory of a registered guest's own files. */
export function guestDir(entry: DomainEntry, name: string): string {
  return path.join(path.dirname(entry.qmp), `${name}.guest`);
}

/** Boots one guest per name (in parallel), then registers them all; all or nothing. */
export async function labOsUp(names: readonly string[], options: OsLabOptions = {}): Promise<OsLabDomain[]> {
  const registryFile = options.registryFile ?? defaultRegistryFile();
  const stateDir = options.stateDir ?? defaultLabStateDir(registryFile);
  const registry = readLabRegistry(registryFile, options);
  const seen = new Set<string>();
  for (const name of names) {
    if (!isValidDomainName(name)) throw Errors.invalidDomainName({ name });
    if (seen.has(name) || name === registry.dom0 || Object.hasOwn(registry.domains, name)) {
      throw Errors.domainExists({ domain: name, file: registryFile });
    }
    seen.add(name);
    const longest = path.join(stateDir, `${name}.guest`, 'agent.sock');
    if (Buffer.byteLength(longest) > MAX_SOCKET_PATH) {
      throw Errors.labStartFailed({
        domain: name,
        reason: `socket path '${longest}' is longer than ${MAX_SOCKET_PATH} bytes; choose a shorter state directory`,
      });
    }
  }
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  for (const name of names) removeStaleGuest(stateDir, name);

  const results = await Promise.allSettled(
    names.map((name) =>
      bootGuest({
        name,
        detached: true,
        dir: path.join(stateDir, `${name}.guest`),
        qmpSocket: path.join(stateDir, `${name}.qmp`),
        pidfile: path.join(stateDir, `${name}.pid`),
        qemuLog: path.join(stateDir, `${name}.log`),
        devices: options.devices,
        accel: options.accel,
        memoryMb: options.memoryMb,
        iommu: options.iommu,
        bootTimeoutMs: options.bootTimeoutMs,
      }),
    ),
  );
  const started = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  const undo = () => Promise.all(started.map((g) => g.dispose()));
  if (failure) {
    await undo();
    throw failure.reason;
  }
  try {
    await updateRegistry(registryFile, (data) => {
      const domains = { ...data.domains };
      for (const g of started) {
        if (Object.hasOwn(domains, g.name)) throw Errors.domainExists({ domain: g.name, file: registryFile });
        domains[g.name] = { qmp: g.qmpSocket, pid: g.pid, lab: true };
      }
      return { ...data, domains };
    });
  } catch (error) {
    await undo();
    throw error;
  }
  await Promise.all(started.map((g: Guest) => g.detach()));
  return started.map((g) => ({ name: g.name, pid: g.pid, socket: g.qmpSocket, accel: g.accel, bootMs: g.bootMs }));
}

/** Runs `fn` with a connection to a registered guest, closed afterwards. */
export async function withLabGuest<T>(
  name: string,
  options: Pick<OsLabOptions, 'registryFile' | 'registryReader'>,
  fn: (session: GuestSession) => Promise<T>,
): Promise<T> {
  const registryFile = options.registryFile ?? defaultRegistryFile();
  const entry = getDomain(readLabRegistry(registryFile, options), name, registryFile);
  const dir = guestDir(entry, name);
  if (!entry.lab || !fs.existsSync(path.join(dir, 'agent.sock'))) throw GuestErrors.notAGuest({ domain: name });
  let session: GuestSession;
  try {
    session = await openGuestSession(name, dir);
  } catch (error) {
    throw GuestErrors.gone({ name, reason: (error as Error).message });
  }
  try {
    return await fn(session);
  } finally {
    await session.close();
  }
}

/** `devgate lab exec NAME -- CMD...`: the command's exit status (128 + n for a signal). */
export async function labExec(
  name: string,
  argv: readonly string[],
  options: Pick<OsLabOptions, 'registryFile' | 'registryReader'> & Pick<ExecOptions, 'onStdout' | 'onStderr' | 'input'>,
): Promise<number> {
  return withLabGuest(name, options, async (session) => {
    const result = await session.exec(argv, options);
    return result.code ?? 128 + (SIGNALS[result.signal ?? ''] ?? 0);
  });
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

/** `devgate lab down`: stops lab VMs (paused ones and guests) and removes the guests' own files. */
export async function labDownWithGuests(
  names: readonly string[] | undefined,
  options: Pick<OsLabOptions, 'registryFile' | 'registryReader'> = {},
): Promise<string[]> {
  const registryFile = options.registryFile ?? defaultRegistryFile();
  const before = readLabRegistry(registryFile, options);
  const guests = Object.entries(before.domains)
    .filter(([name, entry]) => entry.lab && (!names || names.includes(name)))
    .map(([name, entry]) => guestDir(entry, name))
    .filter((dir) => fs.existsSync(dir));
  const stopped = await labDown(names, { registryFile, registryReader: options.registryReader });
  for (const dir of guests) removeGuestDir(dir);
  return stopped;
}

/** A guest directory left by a guest that is no longer registered (a crash, a lost registry). */
function removeStaleGuest(stateDir: string, name: string): void {
  const dir = path.join(stateDir, `${name}.guest`);
  if (fs.existsSync(dir)) removeGuestDir(dir);
}

function removeGuestDir(dir: string): void {
  const pid = readPid(path.join(path.dirname(dir), `${path.basename(dir, '.guest')}.pid`)) ?? guestJsonPid(dir);
  if (pid !== undefined && isGuestQemu(pid, dir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

function guestJsonPid(dir: string): number | undefined {
  try {
    const { pid } = JSON.parse(fs.readFileSync(path.join(dir, 'guest.json'), 'utf8')) as { pid?: number };
    return typeof pid === 'number' ? pid : undefined;
  } catch {
    return undefined;
  }
}
