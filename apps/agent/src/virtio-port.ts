/**
 * virtio-serial ports as the guest kernel offers them (/dev/vportNpM, found by the name the host gave
 * the port in /sys/class/virtio-ports/NAME/name), used with blocking reads and writes in libuv's
 * thread pool. What the kernel does with such a port, measured here:
 *
 * - a write blocks while nobody is connected on the host side, and completes as soon as someone
 *   connects: a server that speaks first (qemu-nbd's greeting, usbredir's hello, the agent's own
 *   hello) is heard by exactly the client that connects, without polling;
 * - a read returns 0 (end of file) while nobody is connected, and when the host side disconnects:
 *   the end of a session is the kernel's own news;
 * - a write in progress when the host side leaves stays blocked until the next connection, and
 *   then hands its bytes to that one: such a port is "dirty" until the host drains it.
 *
 * So a session starts with a write (it completes when the host connects), reads only after that,
 * and ends when a read returns 0.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EventEmitter } from 'node:events';

const PORTS_DIR = '/sys/class/virtio-ports';

/** The device node of the virtio-serial port the host named `name`, if the VM has one. */
export function findVirtioPort(name: string, sysDir = PORTS_DIR, devDir = '/dev'): string | undefined {
  for (const entry of listVirtioPorts(sysDir)) if (entry.name === name) return path.join(devDir, entry.port);
  return undefined;
}

/** Every named virtio-serial port: `{ port: 'vport1p2', name: 'org.devgate.export.0' }`. */
export function listVirtioPorts(sysDir = PORTS_DIR): { port: string; name: string }[] {
  let entries: string[];
  try {
    entries = fs.readdirSync(sysDir);
  } catch {
    return [];
  }
  return entries.flatMap((port) => {
    try {
      const name = fs.readFileSync(path.join(sysDir, port, 'name'), 'utf8').trim();
      return name ? [{ port, name }] : [];
    } catch {
      return [];
    }
  });
}

/**
 * One session on a port: from the first write that completes (the host connected) to the read that
 * returns 0 (the host left). `data` events carry what the host sends; `close` ends it.
 */
export class PortSession extends EventEmitter {
  private queue: Buffer[] = [];
  private writing = false;
  private connectedFlag = false;
  private closedFlag = false;
  /** A write was in progress when the session ended: its bytes will go to the next connection. */
  dirty = false;

  private idleWaiters: (() => void)[] = [];

  /**
   * `previous`: the port's session before this one. A write of it still blocked goes first (it
   * completes when the host connects), so two sessions' bytes never interleave.
   */
  constructor(
    private readonly fd: number,
    private readonly previous?: PortSession,
    private readonly readBuffer = Buffer.alloc(64 * 1024),
  ) {
    super();
  }

  /** Resolves when no write of this session is in progress. */
  idle(): Promise<void> {
    if (!this.writing) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private setIdle(): void {
    this.writing = false;
    this.idleWaiters.splice(0).forEach((wake) => wake());
  }

  /** Whether the host side is connected (a write went through). */
  get connected(): boolean {
    return this.connectedFlag;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Queues bytes; the first write waits for the host to connect. */
  write(data: Buffer | string): void {
    if (this.closedFlag) return;
    this.queue.push(typeof data === 'string' ? Buffer.from(data) : data);
    if (!this.writing) void this.pump();
  }

  /** Bytes queued and not yet handed to the kernel. */
  get queuedBytes(): number {
    return this.queue.reduce((n, b) => n + b.length, 0);
  }

  private async pump(): Promise<void> {
    this.writing = true;
    await this.previous?.idle();
    while (this.queue.length > 0 && !this.closedFlag) {
      let chunk = this.queue.shift()!;
      while (chunk.length > 0) {
        let written: number;
        try {
          written = await new Promise<number>((resolve, reject) =>
            fs.write(this.fd, chunk, 0, chunk.length, null, (error, n) => (error ? reject(error) : resolve(n))),
          );
        } catch (error) {
          this.setIdle();
          return this.close(`write failed: ${(error as Error).message}`);
        }
        if (this.closedFlag) {
          // The host left while this write was blocked: it went to whoever connected next.
          return this.setIdle();
        }
        chunk = chunk.subarray(written);
        if (!this.connectedFlag) {
          this.connectedFlag = true;
          this.emit('connect');
          void this.readLoop();
        }
      }
    }
    this.setIdle();
  }

  private async readLoop(): Promise<void> {
    while (!this.closedFlag) {
      let n: number;
      try {
        n = await new Promise<number>((resolve, reject) =>
          fs.read(this.fd, this.readBuffer, 0, this.readBuffer.length, null, (error, bytes) =>
            error ? reject(error) : resolve(bytes),
          ),
        );
      } catch (error) {
        return this.close(`read failed: ${(error as Error).message}`);
      }
      if (this.closedFlag) return;
      if (n === 0) return this.close('the host side left');
      this.emit('data', Buffer.from(this.readBuffer.subarray(0, n)));
    }
  }

  /** Ends the session: queued bytes are dropped; a write in progress makes the port dirty. */
  close(reason = 'closed'): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.dirty = this.writing;
    this.queue = [];
    this.emit('close', reason);
  }
}

/** Opens a port for blocking I/O (the kernel lets one process open it at a time: EBUSY otherwise). */
export function openPort(device: string): number {
  return fs.openSync(device, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
}
