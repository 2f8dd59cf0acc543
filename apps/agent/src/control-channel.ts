/**
 * The agent's control channel to devgated, pluggable: a virtio-serial port of the backend VM (the
 * host side is a Unix socket of its QEMU, which devgated connects to), or, for tests and hosts
 * where the agent runs beside devgated, a Unix socket the agent listens on. vsock, where the host
 * has it, would be one more transport here; Node has no AF_VSOCK sockets, so it is not built yet.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { EventEmitter } from 'node:events';
import { PortSession, openPort } from './virtio-port.js';

/** One connection of devgated: `data` (Buffer) and `close` events; writes wait for the host. */
export interface ControlSession extends EventEmitter {
  write(data: string): void;
  close(reason?: string): void;
  readonly closed: boolean;
}

export interface ControlTransport {
  /** Calls `onSession` for each connection of the host, one at a time, until disposed. */
  start(onSession: (session: ControlSession) => void): void;
  dispose(): void;
  readonly description: string;
}

/** A virtio-serial port: a session per host connection, the next one armed as soon as one ends. */
export class VirtioControl implements ControlTransport {
  private fd?: number;
  private disposed = false;
  private current?: PortSession;

  constructor(readonly device: string) {}

  get description(): string {
    return `virtio-serial port ${this.device}`;
  }

  start(onSession: (session: ControlSession) => void): void {
    this.fd = openPort(this.device);
    const next = () => {
      if (this.disposed) return;
      const session = new PortSession(this.fd!, this.current);
      this.current = session;
      session.once('close', () => setImmediate(next));
      onSession(session);
    };
    next();
  }

  dispose(): void {
    this.disposed = true;
    this.current?.close('the agent stops');
    // A read blocked in the thread pool keeps the descriptor until it returns; the process exits anyway.
    if (this.fd !== undefined) fs.close(this.fd, () => undefined);
  }
}

/** A Unix socket the agent listens on; a new connection replaces the previous one. */
export class UnixListenControl implements ControlTransport {
  private server?: net.Server;
  private current?: SocketSession;

  constructor(readonly path: string) {}

  get description(): string {
    return `unix socket ${this.path}`;
  }

  start(onSession: (session: ControlSession) => void): void {
    fs.rmSync(this.path, { force: true });
    this.server = net.createServer((socket) => {
      this.current?.close('replaced by a new connection');
      const session = new SocketSession(socket);
      this.current = session;
      onSession(session);
    });
    this.server.listen(this.path);
  }

  dispose(): void {
    this.current?.close('the agent stops');
    this.server?.close();
    fs.rmSync(this.path, { force: true });
  }
}

class SocketSession extends EventEmitter implements ControlSession {
  closed = false;

  constructor(private readonly socket: net.Socket) {
    super();
    socket.on('data', (chunk: Buffer) => this.emit('data', chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => this.close('the host side left'));
  }

  write(data: string): void {
    if (!this.closed) this.socket.write(data);
  }

  close(reason = 'closed'): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.emit('close', reason);
  }
}
