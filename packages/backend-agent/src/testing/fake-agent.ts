/**
 * A test double that speaks the agent protocol, for tests of everything devgated must survive: it
 * listens where a backend VM's QEMU would (a Unix socket), and each test makes it say whatever it
 * wants: well-formed hellos and trees, or malformed, oversized, hostile and flooding lines, or
 * nothing at all. By default it answers pings and accepts exports, as a well-behaved agent does.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { type HostTree } from '@devgate/core';
import { type HostRequest, PROTOCOL_VERSION } from '../protocol.js';
import { treeMessageOf } from '../wire-tree.js';

export interface FakeAgentOptions {
  /** Answer requests as a healthy agent would (default true). */
  readonly autoReply?: boolean;
}

export class FakeAgent {
  readonly requests: HostRequest[] = [];
  private client?: net.Socket;
  private connectionWaiters: ((socket: net.Socket) => void)[] = [];
  private requestWaiters: { match: (r: HostRequest) => boolean; resolve: (r: HostRequest) => void }[] = [];
  private seq = 0;
  autoReply: boolean;
  /** Called on each new connection (what a healthy agent says first: its hello and tree). */
  onConnect?: (fake: FakeAgent) => void;
  /** Connections accepted so far. */
  connections = 0;
  /** What devgated wrote (bytes), for tests of what it sends. */
  receivedBytes = 0;

  private constructor(
    readonly path: string,
    private readonly server: net.Server,
    options: FakeAgentOptions,
  ) {
    this.autoReply = options.autoReply ?? true;
    server.on('connection', (socket) => this.onConnection(socket));
  }

  static async listen(path: string, options: FakeAgentOptions = {}): Promise<FakeAgent> {
    fs.rmSync(path, { force: true });
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    return new FakeAgent(path, server, options);
  }

  private onConnection(socket: net.Socket): void {
    this.connections++;
    this.client?.destroy();
    this.client = socket;
    let buffer = '';
    socket.setEncoding('utf8');
    socket.on('error', () => undefined);
    socket.on('data', (chunk: string) => {
      this.receivedBytes += chunk.length;
      buffer += chunk;
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        let request: HostRequest;
        try {
          request = JSON.parse(line) as HostRequest;
        } catch {
          continue;
        }
        this.requests.push(request);
        for (const waiter of [...this.requestWaiters]) {
          if (waiter.match(request)) {
            this.requestWaiters.splice(this.requestWaiters.indexOf(waiter), 1);
            waiter.resolve(request);
          }
        }
        if (this.autoReply) this.reply(request.id, true);
      }
    });
    for (const wake of this.connectionWaiters.splice(0)) wake(socket);
    this.onConnect?.(this);
  }

  /** Resolves with the next connection (or the current one, if `current` and there is one). */
  connection(current = true): Promise<net.Socket> {
    if (current && this.client && !this.client.destroyed) return Promise.resolve(this.client);
    return new Promise((resolve) => this.connectionWaiters.push(resolve));
  }

  /** Resolves when the host closes the current connection. */
  async closedByHost(): Promise<void> {
    const socket = this.client;
    if (!socket || socket.destroyed) return;
    await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  }

  get isConnected(): boolean {
    return Boolean(this.client && !this.client.destroyed);
  }

  /** Resolves with the first request of `op`, come already or to come. */
  waitForRequest(op: HostRequest['op'], timeoutMs = 10_000): Promise<HostRequest> {
    const found = this.requests.find((r) => r.op === op);
    if (found) return Promise.resolve(found);
    return this.nextRequest(op, timeoutMs);
  }

  /** Resolves with the next request of `op` to come (not one that came before). */
  nextRequest(op: HostRequest['op'], timeoutMs = 10_000): Promise<HostRequest> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no '${op}' request within ${timeoutMs} ms`)), timeoutMs);
      this.requestWaiters.push({
        match: (r) => r.op === op,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
      });
    });
  }

  /** Writes raw bytes: anything at all. Returns false when the host's side is not draining. */
  sendRaw(data: string | Buffer): boolean {
    return this.client?.write(data) ?? false;
  }

  send(message: unknown): boolean {
    return this.sendRaw(JSON.stringify(message) + '\n');
  }

  hello(
    ports: readonly string[] = [],
    exports: readonly string[] = ['nbd', 'usbredir'],
    busy?: readonly string[],
  ): void {
    this.send({ v: PROTOCOL_VERSION, type: 'hello', agent: 'fake-agent 0', exports, ports, ...(busy ? { busy } : {}) });
  }

  tree(tree: HostTree): void {
    this.send(treeMessageOf(tree, ++this.seq));
  }

  /** The next tree sequence number, for hand-made tree messages. */
  nextSeq(): number {
    return ++this.seq;
  }

  reply(id: number, ok: boolean, error?: { code: string; message: string }): void {
    this.send({ v: PROTOCOL_VERSION, type: 'reply', id, ok, ...(error ? { error } : {}) });
  }

  /** Drops the current connection, as an agent that crashed. */
  hangUp(): void {
    this.client?.destroy();
  }

  async close(): Promise<void> {
    this.client?.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    fs.rmSync(this.path, { force: true });
  }
}
