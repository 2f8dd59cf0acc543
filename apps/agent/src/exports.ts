/**
 * Exports: one device of this VM served on one export port, to the one frontend whose QEMU connects
 * to the port's host side. A block device is served by qemu-nbd (read-only when asked); a USB device
 * by usbredirect, which claims it from this VM's kernel and speaks usbredir to the frontend's QEMU.
 * Either server speaks first: its first bytes are written to the port, and that write completes when
 * the frontend connects (virtio-port.ts). The bytes are relayed both ways and never parsed here.
 *
 * An export ends when the frontend leaves (a read of the port returns 0: a detach, or the frontend
 * stopped), when its device goes, when devgated withdraws it, or when nobody connected within the
 * arm timeout. Its server is stopped and the port closed; the port is reported dirty when a write
 * was still pending (the host drains it before reuse).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { EventEmitter } from 'node:events';
import { type ExportSpec } from '@devgate/backend-agent';
import { blockInUseNow } from '@devgate/host';
import { majorMinorOf } from './device-numbers.js';
import { PortSession, openPort } from './virtio-port.js';

export class ExportError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface ExportEnv {
  /** Where sockets and pid files go (`/run/devgate-agent`). */
  readonly runDir: string;
  readonly sysRoot: string;
  readonly devRoot: string;
  /** Where mountinfo and swaps are read (`/proc`). */
  readonly procRoot: string;
  readonly qemuNbd: string;
  readonly usbredirect: string;
  readonly portDevice: (name: string) => string | undefined;
  readonly log: (message: string) => void;
}

/** A running export. `ended` fires once, with the reason and whether the port is clean. */
export class LiveExport extends EventEmitter {
  private ended = false;
  private session?: PortSession;
  private fd?: number;
  private local?: net.Socket;
  private child?: ChildProcess;
  private pidFile?: string;
  private armTimer?: NodeJS.Timeout;
  private goneTimer?: NodeJS.Timeout;
  private server?: net.Server;

  constructor(
    readonly spec: ExportSpec,
    private readonly env: ExportEnv,
  ) {
    super();
  }

  /** Starts the server and arms the port. Resolves once armed; rejects with an ExportError. */
  async start(): Promise<void> {
    const device = this.env.portDevice(this.spec.port);
    if (!device) throw new ExportError('NO_SUCH_PORT', `this VM has no export port ${this.spec.port}`);
    try {
      this.fd = openPort(device);
    } catch (error) {
      throw new ExportError('PORT_BUSY', `cannot open ${this.spec.port}: ${(error as Error).message}`);
    }
    try {
      this.local = this.spec.kind === 'nbd' ? await this.startNbd(this.spec) : await this.startUsbredir(this.spec);
    } catch (error) {
      this.stopServer();
      fs.closeSync(this.fd);
      this.fd = undefined;
      throw error instanceof ExportError ? error : new ExportError('EXPORT_FAILED', (error as Error).message);
    }
    const session = new PortSession(this.fd);
    this.session = session;
    this.local.on('data', (chunk: Buffer) => session.write(chunk));
    this.local.on('close', () => this.end('its server stopped'));
    this.local.on('error', () => undefined);
    session.on('data', (chunk: Buffer) => this.local?.write(chunk));
    session.on('connect', () => {
      clearTimeout(this.armTimer);
      this.env.log(`export ${this.spec.id}: frontend connected on ${this.spec.port}`);
    });
    session.on('close', (reason: string) => this.end(reason === 'the host side left' ? 'the frontend left' : reason));
    this.armTimer = setTimeout(
      () => this.end(`no frontend connected within ${this.spec.armTimeoutMs ?? 30_000} ms`),
      this.spec.armTimeoutMs ?? 30_000,
    );
  }

  private async startNbd(spec: Extract<ExportSpec, { kind: 'nbd' }>): Promise<net.Socket> {
    const node = path.join(this.env.devRoot, spec.devname);
    const stat = fs.statSync(node, { bigint: true, throwIfNoEntry: false });
    if (!stat?.isBlockDevice()) throw new ExportError('DEVICE_CHANGED', `${node} is not a block device`);
    const actual = majorMinorOf(stat.rdev);
    if (actual !== spec.majorMinor) {
      throw new ExportError('DEVICE_CHANGED', `${node} is ${actual}, not ${spec.majorMinor}`);
    }
    // Checked now, as the host's own hand-over does (host-data-path.ts): devgated's listing can be a
    // usage poll old, and a frontend given a partition mounted here since would corrupt it. The
    // message is the bare reason, for devgated's DG_DEVICE_IN_USE.
    const inUse = blockInUseNow(
      {
        sys: this.env.sysRoot,
        dev: this.env.devRoot,
        proc: this.env.procRoot,
        udevData: '',
      },
      path.basename(spec.devname),
    );
    if (inUse) throw new ExportError('DEVICE_IN_USE', inUse);
    const socket = path.join(this.env.runDir, `${spec.id}.nbd`);
    this.pidFile = path.join(this.env.runDir, `${spec.id}.pid`);
    fs.rmSync(socket, { force: true });
    // --fork: the parent exits once the socket listens. Without --persistent, the server ends with
    // its one client (the relay below).
    const args = [
      '--fork',
      `--pid-file=${this.pidFile}`,
      '--shared=1',
      '--format=raw',
      '--cache=none',
      '--aio=threads',
      ...(spec.readOnly ? ['--read-only'] : []),
      `--export-name=${spec.id}`,
      `--socket=${socket}`,
      node,
    ];
    await run(this.env.qemuNbd, args, 20_000);
    return connectUnix(socket);
  }

  private async startUsbredir(spec: Extract<ExportSpec, { kind: 'usbredir' }>): Promise<net.Socket> {
    const dir = path.join(this.env.sysRoot, 'bus/usb/devices', spec.busid);
    const read = (name: string) => fs.readFileSync(path.join(dir, name), 'utf8').trim().toLowerCase();
    let ids: string;
    let busnum: string;
    let devnum: string;
    try {
      ids = `${read('idVendor')}:${read('idProduct')}`;
      busnum = read('busnum');
      devnum = read('devnum');
    } catch {
      throw new ExportError('DEVICE_CHANGED', `no USB device at ${spec.busid}`);
    }
    if (ids !== `${spec.vendorId}:${spec.productId}`) {
      throw new ExportError(
        'DEVICE_CHANGED',
        `the device at ${spec.busid} is ${ids}, not ${spec.vendorId}:${spec.productId}`,
      );
    }
    // usbredirect connects to us (loopback in this VM), and its hello is the first thing relayed.
    const server = net.createServer();
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const { port } = server.address() as net.AddressInfo;
    const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    // `BUS-ADDRESS` (usbredirect's form: the bus number and device address, in decimal).
    const child = spawn(
      this.env.usbredirect,
      ['--device', `${Number(busnum)}-${Number(devnum)}`, '--to', `127.0.0.1:${port}`],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.child = child;
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr = (stderr + text).slice(-2000)));
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (code, signal) =>
        reject(new ExportError('EXPORT_FAILED', `usbredirect exited (${signal ?? code}): ${stderr.trim()}`)),
      ),
    );
    exited.catch(() => undefined);
    child.once('error', () => undefined);
    const socket = await Promise.race([accepted, exited, timeoutAfter(20_000, 'usbredirect did not connect')]);
    server.close();
    child.on('exit', () => this.end('usbredirect exited'));
    return socket;
  }

  /** The device went: the export ends when the frontend leaves, or after `graceMs`. */
  deviceGone(graceMs: number): void {
    if (this.ended || this.goneTimer) return;
    this.env.log(`export ${this.spec.id}: its device is gone; waiting for the frontend to let go`);
    // Never armed (nobody connected): nothing is in flight, end now.
    if (!this.session?.connected) return this.end('its device is gone');
    this.goneTimer = setTimeout(() => this.end('its device is gone'), graceMs);
  }

  /** Ends the export, once. */
  end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.armTimer);
    clearTimeout(this.goneTimer);
    this.session?.close(reason);
    const clean = !this.session?.dirty;
    this.local?.destroy();
    this.stopServer();
    if (this.fd !== undefined) {
      // A write still blocked in the thread pool keeps the port open until the host drains it.
      fs.close(this.fd, () => undefined);
      this.fd = undefined;
    }
    this.env.log(`export ${this.spec.id} ended: ${reason}${clean ? '' : ' (port left dirty)'}`);
    this.emit('ended', reason, clean);
  }

  private stopServer(): void {
    this.server?.close();
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    if (this.pidFile) {
      const pid = Number(fs.readFileSync(this.pidFile, { encoding: 'utf8', flag: 'a+' }).trim());
      if (Number.isInteger(pid) && pid > 0) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // gone already (it ends with its client)
        }
      }
      fs.rmSync(this.pidFile, { force: true });
      fs.rmSync(this.pidFile.replace(/\.pid$/, '.nbd'), { force: true });
    }
  }
}

function run(command: string, args: string[], timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: timeoutMs });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr = (stderr + text).slice(-2000)));
    child.once('error', (error) => reject(new ExportError('EXPORT_FAILED', `${command}: ${error.message}`)));
    child.once('exit', (code, signal) =>
      code === 0
        ? resolve()
        : reject(
            new ExportError('EXPORT_FAILED', `${path.basename(command)} failed (${signal ?? code}): ${stderr.trim()}`),
          ),
    );
  });
}

function connectUnix(file: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(file);
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error) =>
      reject(new ExportError('EXPORT_FAILED', `cannot connect to ${file}: ${error.message}`)),
    );
  });
}

function timeoutAfter(ms: number, what: string): Promise<never> {
  return new Promise((_, reject) => setTimeout(() => reject(new ExportError('EXPORT_FAILED', what)), ms).unref());
}

// Linux's dev_t layout (glibc's gnu_dev_major/minor).
