/**
 * Lab domains: throwaway QEMU processes with no guest OS, for development and tests. Each is a
 * paused (-S) q35 machine with an xHCI controller and two PCIe root ports, so USB and PCIe devices
 * can be hot-plugged into it, and a QMP socket in the state directory. They are registered in the
 * domain registry with `lab: true`, and only those are ever stopped by `labDown`.
 *
 * QEMU runs detached (its own session, stdio to `<name>.log`) rather than with -daemonize: the
 * process that started it stays its parent and reaps it if it dies while that process still runs.
 * A daemonized QEMU is reparented to PID 1, and where PID 1 does not reap (some containers) a
 * killed QEMU stays behind as a zombie; `isQemuAlive` treats zombies as dead for that reason.
 */
import { spawn } from 'node:child_process';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { DevgateError, Errors, isValidDomainName } from '@devgate/core';
import {
  type DomainEntry,
  type DomainRegistryData,
  defaultRegistryFile,
  getDomain,
  readRegistrySync,
  updateRegistry,
} from './domain-registry.js';
import { QmpClient } from './qmp-client.js';

export interface LabOptions {
  /** Default: `defaultRegistryFile()`. */
  readonly registryFile?: string;
  /**
   * How the registry is read; default `readRegistrySync`. The CLI gives devgated's check
   * (`readTrustedRegistry`): what a registry names is stopped, killed and removed, so one that
   * another user could write is refused. Writes (`updateRegistry`) are not changed by it.
   */
  readonly registryReader?: (file: string) => DomainRegistryData;
  /** Where sockets, pidfiles and logs go. Default: `$XDG_RUNTIME_DIR/devgate/lab`, else `lab/` beside the registry. */
  readonly stateDir?: string;
  /** Default: `$DEVGATE_QEMU`, else `qemu-system-x86_64`. */
  readonly qemuBinary?: string;
  /** Guest RAM in MiB. Default 64 (nothing runs in it). */
  readonly memoryMb?: number;
  /** How long QEMU may take to answer on QMP. Default 10000 ms. */
  readonly readyTimeoutMs?: number;
  /** How long `quit` may take before SIGKILL. Default 3000 ms. */
  readonly stopTimeoutMs?: number;
}

export interface LabDomain {
  readonly name: string;
  readonly pid: number;
  readonly socket: string;
  /** The process exists, is not a zombie, and is the QEMU serving `socket`. */
  readonly running: boolean;
}

/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

export function defaultLabStateDir(registryFile: string, env: NodeJS.ProcessEnv = process.env): string {
  const runtime = env['XDG_RUNTIME_DIR'];
  return runtime ? join(runtime, 'devgate', 'lab') : join(dirname(registryFile), 'lab');
}

/** The command line of a lab QEMU. Exported so the CLI can show it (`--dry-run`) and tests can check it. */
export function labQemuArgs(name: string, socket: string, pidfile: string, memoryMb = 64): string[] {
  // In QEMU option lists a comma is written as ",,"; domain names cannot contain one, paths can.
  const qemuPath = (path: string) => path.replaceAll(',', ',,');
  // prettier-ignore
  return [
    '-name', `${name},process=qemu-${name}`,
    '-machine', 'q35',
    // TCG, not KVM: nothing executes (-S), and TCG works everywhere, with or without /dev/kvm.
    '-accel', 'tcg',
    '-S',
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-m', String(memoryMb),
    '-device', 'qemu-xhci,id=xhci',
    // PCIe hot-plug on q35 needs a root port: pcie.0 itself does not support it.
    '-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1',
    '-device', 'pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2',
    '-qmp', `unix:${qemuPath(socket)},server=on,wait=off`,
    '-pidfile', pidfile,
  ];
}

/** Starts one paused QEMU per name, waits until each answers on QMP, then registers them all. */
export async function labUp(names: readonly string[], options: LabOptions = {}): Promise<LabDomain[]> {
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
    const socket = socketPath(stateDir, name);
    if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) {
      throw Errors.labStartFailed({
        domain: name,
        reason: `socket path '${socket}' is longer than ${MAX_SOCKET_PATH} bytes; choose a shorter state directory`,
      });
    }
  }
  await fs.mkdir(stateDir, { recursive: true, mode: 0o700 });

  const results = await Promise.allSettled(names.map((name) => startOne(name, stateDir, options)));
  const started = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) {
    // All or nothing: do not leave half a lab running and unregistered.
    await Promise.all(started.map((d) => stopQemu(d.pid, d.socket, options.stopTimeoutMs ?? 3_000)));
    await Promise.all(started.map((d) => removeFiles(stateDir, d.name)));
    throw failure.reason;
  }

  try {
    await updateRegistry(registryFile, (data) => {
      const domains = { ...data.domains };
      for (const d of started) {
        // Re-checked here: another process may have registered the name while QEMU started.
        if (Object.hasOwn(domains, d.name)) throw Errors.domainExists({ domain: d.name, file: registryFile });
        domains[d.name] = { qmp: d.socket, pid: d.pid, lab: true };
      }
      return { ...data, domains };
    });
  } catch (error) {
    await Promise.all(started.map((d) => stopQemu(d.pid, d.socket, options.stopTimeoutMs ?? 3_000)));
    await Promise.all(started.map((d) => removeFiles(stateDir, d.name)));
    throw error;
  }
  return started.map((d) => ({ ...d, running: true }));
}

/**
 * Stops lab domains (all of them without `names`): QMP `quit`, SIGKILL if that does not end the
 * process within `stopTimeoutMs`; then removes socket, pidfile and log and unregisters them.
 * Refuses domains that are not lab domains. Returns the names it stopped.
 */
/**
 * Registers a backend domain replayed from a recording (`devgate lab up sys-usb --recording F`):
 * every command then lists its devices as that backend's, and they can be attached to lab VMs.
 */
export async function labBackendUp(name: string, recording: string, options: LabOptions = {}): Promise<void> {
  const registryFile = options.registryFile ?? defaultRegistryFile();
  if (!isValidDomainName(name)) throw Errors.invalidDomainName({ name });
  await updateRegistry(registryFile, (data) => {
    if (name === data.dom0 || Object.hasOwn(data.domains, name) || Object.hasOwn(data.backends ?? {}, name)) {
      throw Errors.domainExists({ domain: name, file: registryFile });
    }
    return { ...data, backends: { ...data.backends, [name]: { recording: resolve(recording) } } };
  });
}

export async function labDown(names?: readonly string[], options: LabOptions = {}): Promise<string[]> {
  const registryFile = options.registryFile ?? defaultRegistryFile();
  const before = readLabRegistry(registryFile, options);
  // Recorded backends have no process: unregistering them is all there is to it.
  const recorded = (names ?? Object.keys(before.backends ?? {})).filter((n) => Object.hasOwn(before.backends ?? {}, n));
  if (recorded.length > 0) {
    await updateRegistry(registryFile, (data) => {
      const backends = { ...data.backends };
      for (const name of recorded) delete backends[name];
      return { ...data, backends };
    });
    names = names?.filter((n) => !recorded.includes(n));
    if (names?.length === 0) return recorded;
  }
  const registry = readLabRegistry(registryFile, options);
  const targets = names ?? Object.keys(registry.domains).filter((name) => registry.domains[name].lab);
  const entries = targets.map((name) => [name, getDomain(registry, name, registryFile)] as const);
  for (const [name, entry] of entries) if (!entry.lab) throw Errors.notLabDomain({ domain: name });

  await Promise.all(
    entries.map(async ([name, entry]) => {
      const pid = entry.pid ?? readPidfile(pidfilePath(dirname(entry.qmp), name));
      if (pid !== undefined) await stopQemu(pid, entry.qmp, options.stopTimeoutMs ?? 3_000);
      await removeFiles(dirname(entry.qmp), name);
    }),
  );
  await updateRegistry(registryFile, (data) => {
    const domains = { ...data.domains };
    for (const [name] of entries) delete domains[name];
    return { ...data, domains };
  });
  return [...recorded, ...entries.map(([name]) => name)];
}

/** The lab domains in the registry and whether their QEMU is alive. */
export async function labList(options: Pick<LabOptions, 'registryFile' | 'registryReader'> = {}): Promise<LabDomain[]> {
  const registry = readLabRegistry(options.registryFile ?? defaultRegistryFile(), options);
  const vms = Object.entries(registry.domains)
    .filter(([, entry]) => entry.lab)
    .map(([name, entry]: [string, DomainEntry]) => {
      const pid = entry.pid ?? readPidfile(pidfilePath(dirname(entry.qmp), name)) ?? 0;
      return { name, pid, socket: entry.qmp, running: pid > 0 && isQemuAlive(pid, entry.qmp) };
    });
  // A recorded backend is "running" while its recording is there; its socket column shows the file.
  const recorded = Object.entries(registry.backends ?? {}).map(([name, { recording }]) => ({
    name,
    pid: 0,
    socket: recording,
    running: existsSync(recording),
  }));
  return [...vms, ...recorded];
}

/** The registry read as `options` says (`registryReader`); the lab's guests (@devgate/guest-lab) read it so too. */
export function readLabRegistry(file: string, options: Pick<LabOptions, 'registryReader'>): DomainRegistryData {
  return (options.registryReader ?? readRegistrySync)(file);
}

/**
 * Whether `pid` is a live (not zombie) process whose command line mentions `socket`. The second
 * check keeps a recycled pid from being mistaken for, and killed as, our QEMU.
 */
export function isQemuAlive(pid: number, socket: string): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The state follows the parenthesised comm, which may itself contain spaces or parentheses.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return false;
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes(socket.replaceAll(',', ',,'));
  } catch {
    return false;
  }
}

// -- internals

interface Started {
  readonly name: string;
  readonly pid: number;
  readonly socket: string;
}

function socketPath(stateDir: string, name: string): string {
  return join(stateDir, `${name}.qmp`);
}
function pidfilePath(stateDir: string, name: string): string {
  return join(stateDir, `${name}.pid`);
}
function logPath(stateDir: string, name: string): string {
  return join(stateDir, `${name}.log`);
}

async function startOne(name: string, stateDir: string, options: LabOptions): Promise<Started> {
  const socket = socketPath(stateDir, name);
  const pidfile = pidfilePath(stateDir, name);
  const logFile = logPath(stateDir, name);
  // A socket left by a QEMU that was SIGKILLed would make -qmp fail with "Address already in use".
  await removeFiles(stateDir, name);
  const log = await fs.open(logFile, 'w', 0o600);
  const binary = options.qemuBinary ?? process.env['DEVGATE_QEMU'] ?? 'qemu-system-x86_64';
  const child = spawn(binary, labQemuArgs(name, socket, pidfile, options.memoryMb), {
    detached: true, // own session: no SIGINT/SIGHUP from our terminal
    stdio: ['ignore', log.fd, log.fd],
  });
  // Listen before the first await: a spawn failure is emitted on the next tick.
  const failed = (reason: string) => Errors.labStartFailed({ domain: name, reason });
  const exited = new Promise<never>((_, reject) => {
    child.once('error', (error: NodeJS.ErrnoException) =>
      reject(failed(error.code === 'ENOENT' ? `${binary} not found` : error.message)),
    );
    child.once('exit', (code, signal) => {
      const tail = readLogTail(logFile);
      reject(failed(`QEMU exited (${signal ?? `code ${code}`})${tail ? `: ${tail}` : ''}`));
    });
  });
  exited.catch(() => {}); // observed below; avoids an unhandled rejection once we stop listening
  await log.close(); // the child holds its own copy

  const giveUp = new AbortController(); // stops the connect retries once QEMU has exited
  try {
    const timeoutMs = options.readyTimeoutMs ?? 10_000;
    const ready = (async () => {
      const client = await QmpClient.connect(socket, {
        retryForMs: timeoutMs,
        handshakeTimeoutMs: timeoutMs,
        signal: giveUp.signal,
      });
      try {
        await client.execute('query-status');
      } finally {
        await client.close();
      }
    })();
    await Promise.race([ready, exited]);
  } catch (error) {
    giveUp.abort();
    if (child.pid !== undefined && child.exitCode === null) child.kill('SIGKILL');
    await removeFiles(stateDir, name);
    throw error instanceof DevgateError && error.code === Errors.labStartFailed.code
      ? error
      : failed(error instanceof Error ? error.message : String(error));
  }
  child.removeAllListeners('exit');
  child.removeAllListeners('error');
  child.unref(); // let our process exit while QEMU keeps running
  return { name, pid: child.pid!, socket };
}

/** `quit` over QMP, then SIGKILL after `timeoutMs`. Resolves once the process is gone. */
async function stopQemu(pid: number, socket: string, timeoutMs: number): Promise<void> {
  if (!isQemuAlive(pid, socket)) return;
  const deadline = Date.now() + timeoutMs;
  try {
    const client = await QmpClient.connect(socket, { handshakeTimeoutMs: timeoutMs, commandTimeoutMs: timeoutMs });
    // QEMU may close the socket before or after answering `quit`; both are fine.
    await client.execute('quit').catch(() => {});
    await client.close();
    while (Date.now() < deadline && isQemuAlive(pid, socket)) await sleep(20);
  } catch {
    // No QMP (hung, another client connected, socket removed): fall through to SIGKILL.
  }
  if (isQemuAlive(pid, socket)) {
    process.kill(pid, 'SIGKILL');
    const killDeadline = Date.now() + 2_000;
    while (Date.now() < killDeadline && isQemuAlive(pid, socket)) await sleep(20);
  }
}

async function removeFiles(stateDir: string, name: string): Promise<void> {
  await Promise.all([socketPath, pidfilePath, logPath].map((path) => fs.rm(path(stateDir, name), { force: true })));
}

function readPidfile(file: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function readLogTail(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-3).join(' | ');
  } catch {
    return '';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
