/**
 * Lab guests: real Linux guests under QEMU, booted from the host's own userland (a read-only 9p view
 * of `/` under a tmpfs overlay), so `node` and devgate's built packages run inside them unchanged.
 *
 * A guest has, in its directory:
 *   agent.sock   the command channel (a virtio console; guest/agent.cjs answers inside)
 *   lab.qmp      the lab's own QMP monitor (plugging and pulling devices)
 *   qmp.sock     a second QMP monitor left free for devgate (the domain registry points at it;
 *                QEMU serves one client per monitor, and devgated keeps its connection open)
 *   console.log  the serial console;  qemu.log  QEMU's own messages;  qemu.pid
 *   owner.json   the process that owns the guest (see reaper.ts);  guest.json  what the CLI needs
 * plus the images and overlays made for its sticks.
 *
 * The machine is a q35 with a `qemu-xhci` controller with id `xhci` and 8 ports per speed (p2=8,
 * p3=8: without them QEMU adds a hub after 4 devices) and two PCIe root ports (rp1, rp2) for
 * devgate's virtio-blk attachments, as devgate's QEMU connector expects of a VM.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DevgateError } from '@devgate/core';
import { QmpClient } from '@devgate/backend-qemu';
import { type Accelerator, type AcceleratorChoice, chooseAccelerator } from './accelerator.js';
import {
  AgentChannel,
  AgentChannelClosed,
  AgentError,
  type ExecOptions,
  type ExecResult,
  type GuestUevent,
  type UeventMatch,
  type WaitCondition,
} from './agent-channel.js';
import { GuestErrors } from './guest-errors.js';
import { type GuestImage, prepareGuestImage } from './guest-image.js';
import {
  type DeviceSpec,
  type LabDevice,
  bootDeviceArgs,
  listLabDevices,
  plugDevice,
  serialRead,
  serialWrite,
  unplugDevice,
} from './lab-devices.js';
import { currentOwner, isGuestQemu, killOnExit, labRunRoot, readPid, sweepStaleGuests } from './reaper.js';

export interface GuestOptions {
  /** The guest's host name, and its name in messages. Default `guest`. */
  readonly name?: string;
  /** Devices present from power-on. */
  readonly devices?: readonly DeviceSpec[];
  /** An emulated Intel IOMMU (intel-iommu; the guest boots with intel_iommu=on). */
  readonly iommu?: boolean;
  /** Default 512. */
  readonly memoryMb?: number;
  /** Default 1. */
  readonly cpus?: number;
  /** Default `$DEVGATE_LAB_ACCEL`, else auto (KVM if it runs a guest, else TCG). */
  readonly accel?: AcceleratorChoice;
  /** Default: `prepareGuestImage()` (cached). */
  readonly image?: GuestImage;
  /** The guest's directory. Default: a new one under `labRunRoot()`. Removed on dispose. */
  readonly dir?: string;
  /** Where devgate's QMP socket goes. Default `<dir>/qmp.sock`. */
  readonly qmpSocket?: string;
  readonly pidfile?: string;
  readonly qemuLog?: string;
  /** More kernel parameters. */
  readonly kernelArgs?: readonly string[];
  /** More modules stage 2 loads at boot (no udevd loads them on hotplug). */
  readonly modules?: readonly string[];
  /** Run systemd-udevd in the guest (coldplug included): /run/udev/data as on a real host. */
  readonly udev?: boolean;
  readonly qemuBinary?: string;
  /** From QEMU's start to the agent's greeting. Default 180 s (TCG on a busy machine), 60 s on KVM. */
  readonly bootTimeoutMs?: number;
  /**
   * The guest outlives this process (the CLI's `lab up --os`): no owner, no pdeathsig, and
   * `detach()` leaves it running. Default false.
   */
  readonly detached?: boolean;
  readonly extraQemuArgs?: readonly string[];
}

export interface WaitOptions {
  /** Default 30 s (a deadline: the wait ends as soon as the condition holds). */
  readonly timeoutMs?: number;
}

/** A connection to a running guest: its agent and its lab QMP monitor. */
export class GuestSession {
  constructor(
    readonly name: string,
    readonly dir: string,
    protected readonly agent: AgentChannel,
    protected readonly labQmp: QmpClient,
  ) {}

  /**
   * Runs a command in the guest: an argv, or a string for `/bin/sh -c`. Resolves with its output and
   * status whatever the status; see `check` for "must succeed".
   */
  async exec(command: string | readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    try {
      return await this.agent.exec(argvOf(command), options).result;
    } catch (error) {
      throw this.translate(error);
    }
  }

  /** `exec`, and its stdout; a non-zero status is DG_GUEST_COMMAND_FAILED with the stderr. */
  async check(command: string | readonly string[], options: ExecOptions = {}): Promise<string> {
    const result = await this.exec(command, options);
    if (result.code !== 0) {
      throw GuestErrors.commandFailed({
        name: this.name,
        command: typeof command === 'string' ? command : command.join(' '),
        code: result.code,
        signal: result.signal,
        stderr: result.stderr,
      });
    }
    return result.stdout;
  }

  /** Starts a command that keeps running (a daemon, a monitor): kill it, or await its result. */
  spawn(command: string | readonly string[], options: ExecOptions = {}): GuestProcess {
    const { id, result } = this.agent.exec(argvOf(command), options);
    const translated = result.catch((error: unknown) => {
      throw this.translate(error);
    });
    translated.catch(() => undefined);
    return {
      result: translated,
      kill: async (signal = 'SIGTERM') => {
        await this.agent.request('kill', { target: await id, signal }).catch(() => undefined);
      },
    };
  }

  /** The position in the guest's uevent log now; waits `since` it see only what comes after. */
  async ueventMark(): Promise<number> {
    const reply = await this.request<{ cursor: number }>('mark', {}, 30_000);
    return reply.cursor;
  }

  /** The first uevent after `since` (default: any the agent has seen) whose properties match. */
  async waitForUevent(match: UeventMatch, options: WaitOptions & { since?: number } = {}): Promise<GuestUevent> {
    const reply = await this.wait(
      { uevent: match, since: options.since ?? 0 },
      `uevent ${JSON.stringify(match)}`,
      options,
    );
    return reply['event'] as GuestUevent;
  }

  /** Waits until a path exists in the guest (or, with `exists: false`, until it is gone). */
  async waitForPath(file: string, options: WaitOptions & { exists?: boolean } = {}): Promise<void> {
    const exists = options.exists ?? true;
    await this.wait({ path: file, exists }, `${exists ? '' : 'removal of '}${file}`, options);
  }

  /** Every uevent the agent saw after `since`. */
  async uevents(since = 0): Promise<GuestUevent[]> {
    return (await this.request<{ events: GuestUevent[] }>('uevents', { since }, 30_000)).events;
  }

  /** Plugs an emulated device into the running guest; returns its id. */
  async plug(spec: DeviceSpec): Promise<string> {
    return plugDevice(this.labQmp, spec, this.dir);
  }

  /** Pulls a device out: by id, or by kind when it is the only one of its kind. Returns the id. */
  async unplug(idOrKind: string): Promise<string> {
    return unplugDevice(this.labQmp, idOrKind, this.dir, this.name);
  }

  /** The lab's devices plugged in now. */
  devices(): Promise<LabDevice[]> {
    return listLabDevices(this.labQmp);
  }

  serialRead(id: string): Promise<string> {
    return serialRead(this.labQmp, id);
  }

  serialWrite(id: string, data: string): Promise<void> {
    return serialWrite(this.labQmp, id, data);
  }

  /** The lab's QMP monitor, for anything else (`input-send-event`, `query-block`, ...). */
  get qmp(): QmpClient {
    return this.labQmp;
  }

  /** Closes the connections; the guest keeps running. */
  async close(): Promise<void> {
    this.agent.close();
    await this.labQmp.close().catch(() => undefined);
  }

  private async wait(condition: WaitCondition, what: string, options: WaitOptions): Promise<Record<string, unknown>> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    try {
      // The guest keeps the deadline; the host's own, a little later, covers a guest that hangs.
      return await this.agent.request('wait', { condition, timeoutMs }, { timeoutMs: timeoutMs + 5_000 });
    } catch (error) {
      if (error instanceof AgentError && error.message === 'timeout') {
        throw GuestErrors.timeout({ name: this.name, waitingFor: what, timeoutMs });
      }
      throw this.translate(error);
    }
  }

  private async request<T extends object>(op: string, args: Record<string, unknown>, timeoutMs: number) {
    try {
      return await this.agent.request<T>(op, args, { timeoutMs });
    } catch (error) {
      if (error instanceof AgentError && error.message === 'timeout') {
        throw GuestErrors.timeout({ name: this.name, waitingFor: `answer to '${op}'`, timeoutMs });
      }
      throw this.translate(error);
    }
  }

  protected translate(error: unknown): Error {
    if (error instanceof DevgateError) return error;
    if (error instanceof AgentChannelClosed) return GuestErrors.gone({ name: this.name, reason: error.message });
    if (error instanceof AgentError) return GuestErrors.agentError({ name: this.name, reason: error.message });
    return error as Error;
  }
}

export interface GuestProcess {
  readonly result: Promise<ExecResult>;
  kill(signal?: string): Promise<void>;
}

/** A guest this process started. `dispose()` stops it and removes everything it made. */
export class Guest extends GuestSession {
  private disposed?: Promise<void>;

  constructor(
    name: string,
    dir: string,
    agent: AgentChannel,
    labQmp: QmpClient,
    private readonly child: ChildProcess,
    /** The socket devgate's QEMU connector talks to (register it in the domain registry). */
    readonly qmpSocket: string,
    readonly accel: Accelerator,
    /** From QEMU's start to the agent's greeting. */
    readonly bootMs: number,
    private readonly forgetOnExit: () => void,
    private readonly ownedFiles: readonly string[],
  ) {
    super(name, dir, agent, labQmp);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Whether QEMU still runs. */
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The serial console so far (kernel messages, stage 1 and 2). */
  consoleLog(): string {
    return readOr(path.join(this.dir, 'console.log'));
  }

  /** Stops QEMU (QMP quit, SIGKILL after 5 s) and removes the guest's directory. Idempotent. */
  dispose(): Promise<void> {
    this.disposed ??= (async () => {
      this.agent.close();
      if (this.running) {
        const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
        await this.labQmp.execute('quit', undefined, { timeoutMs: 2_000 }).catch(() => undefined);
        const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      await this.labQmp.close().catch(() => undefined);
      for (const file of this.ownedFiles) fs.rmSync(file, { force: true });
      fs.rmSync(this.dir, { recursive: true, force: true });
      this.forgetOnExit();
    })();
    return this.disposed;
  }

  /** For guests booted `detached`: close the connections and leave QEMU running. */
  async detach(): Promise<void> {
    this.forgetOnExit();
    await this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/** Boots a guest and waits until its agent answers. */
export async function bootGuest(options: GuestOptions = {}): Promise<Guest> {
  const name = options.name ?? 'guest';
  const image = options.image ?? (await prepareGuestImage());
  const accel = await chooseAccelerator(image, options.accel);
  const qemu = options.qemuBinary ?? process.env['DEVGATE_QEMU'] ?? 'qemu-system-x86_64';

  if (!options.detached) sweepStaleGuests();
  const dir = options.dir ?? fs.mkdtempSync(path.join(ensureDir(labRunRoot()), `${name}-`));
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (!options.detached) fs.writeFileSync(path.join(dir, 'owner.json'), JSON.stringify(currentOwner()) + '\n');
  const qmpSocket = options.qmpSocket ?? path.join(dir, 'qmp.sock');
  const pidfile = options.pidfile ?? path.join(dir, 'qemu.pid');
  const qemuLog = options.qemuLog ?? path.join(dir, 'qemu.log');
  const ownedFiles = [qmpSocket, pidfile, qemuLog].filter((f) => path.dirname(f) !== dir);
  const cleanupFiles = () => {
    for (const file of ownedFiles) fs.rmSync(file, { force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  };

  let child: ChildProcess | undefined;
  let forget = () => {};
  try {
    for (const file of ownedFiles) fs.rmSync(file, { force: true }); // a stale socket would stop -qmp
    const devices = bootDeviceArgs(options.devices ?? [], dir);
    const args = guestQemuArgs({ name, dir, image, accel, qmpSocket, pidfile, options, deviceArgs: devices.args });
    const log = fs.openSync(qemuLog, 'w', 0o600);
    const pdeathsig = !options.detached && hasSetpriv();
    const started = Date.now();
    try {
      child = pdeathsig
        ? spawn('setpriv', ['--pdeathsig', 'KILL', '--', qemu, ...args], { stdio: ['ignore', log, log] })
        : spawn(qemu, args, { stdio: ['ignore', log, log], detached: Boolean(options.detached) });
    } finally {
      fs.closeSync(log);
    }
    const proc = child;
    forget = killOnExit({ pid: () => proc.pid, dir });
    const exited = new Promise<never>((_, reject) => {
      proc.once('error', (error) => reject(new Error(`cannot run ${qemu}: ${error.message}`)));
      proc.once('exit', (code, signal) => reject(new Error(`QEMU exited (${signal ?? `code ${code}`})`)));
    });
    exited.catch(() => undefined);

    const timeoutMs = options.bootTimeoutMs ?? (accel === 'kvm' ? 60_000 : 180_000);
    const giveUp = new AbortController();
    const deadline = setTimeout(() => giveUp.abort(), timeoutMs);
    let agent: AgentChannel | undefined;
    let labQmp: QmpClient | undefined;
    try {
      const connected = (async () => {
        labQmp = await QmpClient.connect(path.join(dir, 'lab.qmp'), {
          retryForMs: timeoutMs,
          handshakeTimeoutMs: timeoutMs,
          signal: giveUp.signal,
        });
        agent = await AgentChannel.connect(path.join(dir, 'agent.sock'), { retryForMs: 10_000 });
        return agent.hello;
      })();
      const timedOut = new Promise<never>((_, reject) =>
        giveUp.signal.addEventListener('abort', () => reject(new Error(`no answer within ${timeoutMs} ms`))),
      );
      await Promise.race([connected, exited, timedOut]);
    } catch (error) {
      agent?.close();
      labQmp?.destroy();
      throw error;
    } finally {
      clearTimeout(deadline);
      giveUp.abort();
    }
    proc.removeAllListeners('exit');
    proc.removeAllListeners('error');
    proc.on('error', () => undefined);
    proc.unref(); // a forgotten guest must not keep the process alive (the 'exit' hook kills it)
    if (options.detached) {
      fs.writeFileSync(
        path.join(dir, 'guest.json'),
        JSON.stringify({ name, pid: proc.pid, qmp: qmpSocket, accel, bootMs: Date.now() - started }) + '\n',
      );
    }
    return new Guest(name, dir, agent!, labQmp!, proc, qmpSocket, accel, Date.now() - started, forget, ownedFiles);
  } catch (error) {
    const consoleTail = tail(readOr(path.join(dir, 'console.log')), 15);
    const qemuTail = tail(readOr(qemuLog), 5);
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    forget();
    cleanupFiles();
    if (error instanceof DevgateError) throw error;
    throw GuestErrors.bootFailed({
      name,
      reason: `${(error as Error).message}${qemuTail ? ` (${qemuTail.replaceAll('\n', ' | ')})` : ''}`,
      console: consoleTail,
    });
  }
}

/** Connects to a running guest by its directory (the CLI's `lab exec` and `lab plug`). */
export async function openGuestSession(name: string, dir: string, timeoutMs = 10_000): Promise<GuestSession> {
  const agent = await AgentChannel.connect(path.join(dir, 'agent.sock'));
  try {
    const labQmp = await QmpClient.connect(path.join(dir, 'lab.qmp'), { handshakeTimeoutMs: timeoutMs });
    return new GuestSession(name, dir, agent, labQmp);
  } catch (error) {
    agent.close();
    throw error;
  }
}

interface ArgsInput {
  readonly name: string;
  readonly dir: string;
  readonly image: GuestImage;
  readonly accel: Accelerator;
  readonly qmpSocket: string;
  readonly pidfile: string;
  readonly options: GuestOptions;
  readonly deviceArgs: readonly string[];
}

/** QEMU's command line for a guest. Exported for tests and for `--dry-run` style displays. */
export function guestQemuArgs(input: ArgsInput): string[] {
  const { name, dir, image, accel, qmpSocket, pidfile, options } = input;
  const opt = (value: string) => value.replaceAll(',', ',,'); // QEMU's escape in option lists
  const kernelArgs = [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    'rdinit=/init',
    // A stick's disk appears about a second sooner (the default waits 1 s for it to settle).
    'usb_storage.delay_use=0',
    `devgate.name=${name}`,
    `devgate.node=${process.execPath}`,
    ...(options.modules?.length ? [`devgate.modules=${options.modules.join(',')}`] : []),
    ...(options.udev ? ['devgate.udev=1'] : []),
    ...(options.iommu ? ['intel_iommu=on'] : []),
    ...(options.kernelArgs ?? []),
  ];
  // prettier-ignore
  return [
    '-name', `${name},process=devgate-lab-${name}`,
    '-machine', accel === 'kvm' && options.iommu ? 'q35,kernel-irqchip=split' : 'q35',
    '-accel', accel === 'kvm' ? 'kvm' : 'tcg,tb-size=64',
    '-cpu', accel === 'kvm' ? 'host' : 'max',
    '-smp', String(options.cpus ?? 1),
    '-m', String(options.memoryMb ?? 512),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-monitor', 'none',
    '-chardev', `file,id=console,path=${opt(path.join(dir, 'console.log'))}`,
    '-serial', 'chardev:console',
    // An IOMMU comes before the devices it translates for.
    ...(options.iommu ? ['-device', accel === 'kvm' ? 'intel-iommu,intremap=on' : 'intel-iommu'] : []),
    '-kernel', image.kernel,
    '-initrd', image.initrd,
    '-append', kernelArgs.join(' '),
    '-fsdev', 'local,id=root,path=/,security_model=none,readonly=on,multidevs=remap',
    '-device', 'virtio-9p-pci,fsdev=root,mount_tag=root',
    '-device', 'virtio-serial-pci,id=vser',
    '-chardev', `socket,id=agent,path=${opt(path.join(dir, 'agent.sock'))},server=on,wait=off`,
    '-device', 'virtconsole,chardev=agent,name=devgate.agent',
    '-device', 'qemu-xhci,id=xhci,p2=8,p3=8',
    '-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1',
    '-device', 'pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2',
    '-qmp', `unix:${opt(path.join(dir, 'lab.qmp'))},server=on,wait=off`,
    '-qmp', `unix:${opt(qmpSocket)},server=on,wait=off`,
    '-pidfile', pidfile,
    ...input.deviceArgs,
    ...(options.extraQemuArgs ?? []),
  ];
}

function argvOf(command: string | readonly string[]): readonly string[] {
  return typeof command === 'string' ? ['/bin/sh', '-c', command] : command;
}

let setprivKnown: boolean | undefined;
function hasSetpriv(): boolean {
  setprivKnown ??= spawnSync('setpriv', ['--help'], { stdio: 'ignore' }).status === 0;
  return setprivKnown;
}

function ensureDir(dir: string): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  return dir;
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function tail(text: string, lines: number): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

export { isGuestQemu, readPid };
