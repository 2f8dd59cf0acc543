/**
 * Test fixtures: real QEMU processes and temp dirs that are always cleaned up, and a fake QMP peer
 * for the cases a real QEMU cannot be made to show (a hung or misbehaving server).
 * Not part of the published build (tsconfig.lib.json excludes src/testing).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { labQemuArgs } from '../lab.js';

export interface QemuProcess {
  readonly pid: number;
  readonly socket: string;
  readonly child: ChildProcess;
}

/** Collects what a test created; `run()` (in afterEach/afterAll) removes all of it. */
export class Cleanup {
  private readonly pids = new Set<number>();
  private readonly dirs = new Set<string>();
  private readonly actions: (() => unknown)[] = [];

  async tempDir(prefix = 'dg-qemu-'): Promise<string> {
    const dir = await fs.mkdtemp(join(tmpdir(), prefix));
    this.dirs.add(dir);
    return dir;
  }

  pid(pid: number): void {
    this.pids.add(pid);
  }

  defer(action: () => unknown): void {
    this.actions.push(action);
  }

  async run(): Promise<void> {
    for (const action of this.actions.splice(0).reverse()) {
      try {
        await action();
      } catch {
        // keep cleaning
      }
    }
    for (const pid of this.pids) {
      // Only ever a QEMU: a pid from a registry file could be anything, even 1.
      if (!isQemuProcess(pid)) continue;
      process.kill(pid, 'SIGKILL');
      await waitUntil(() => !processExists(pid), 3_000).catch(() => {});
    }
    this.pids.clear();
    for (const dir of this.dirs) await fs.rm(dir, { recursive: true, force: true });
    this.dirs.clear();
  }
}

/** A paused lab-style QEMU as a direct child of the test process, once its QMP socket exists. */
export async function startQemu(cleanup: Cleanup, dir: string, name = 'vm'): Promise<QemuProcess> {
  const socket = join(dir, `${name}.qmp`);
  const child = spawn('qemu-system-x86_64', labQemuArgs(name, socket, join(dir, `${name}.pid`)), {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  if (child.pid === undefined) throw new Error('qemu-system-x86_64 did not start');
  cleanup.pid(child.pid);
  await waitUntil(() => existsSync(socket) || child.exitCode !== null, 10_000);
  if (child.exitCode !== null) throw new Error(`QEMU exited: ${stderr}`);
  return { pid: child.pid, socket, child };
}

function isQemuProcess(pid: number): boolean {
  try {
    return processExists(pid) && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system');
  } catch {
    return false;
  }
}

/** Whether the process exists and is not a zombie. */
export function processExists(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export async function waitUntil(condition: () => boolean, timeoutMs: number, intervalMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * A fake QMP server. `onConnection` scripts what it does with each client; the helpers below send
 * the greeting and read requests.
 */
export async function fakeQmpServer(
  cleanup: Cleanup,
  socket: string,
  onConnection: (peer: FakePeer) => void,
): Promise<Server> {
  const server = createServer((connection) => onConnection(new FakePeer(connection)));
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  cleanup.defer(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const peer of FakePeer.all.splice(0)) peer.connection.destroy();
      }),
  );
  return server;
}

export class FakePeer {
  static readonly all: FakePeer[] = [];
  private buffer = '';
  private readonly waiting: ((request: Record<string, unknown>) => void)[] = [];
  private readonly queued: Record<string, unknown>[] = [];

  constructor(readonly connection: Socket) {
    FakePeer.all.push(this);
    connection.setEncoding('utf8');
    connection.on('error', () => {});
    connection.on('data', (chunk: string) => {
      this.buffer += chunk;
      let newline: number;
      while ((newline = this.buffer.indexOf('\n')) >= 0) {
        const request = JSON.parse(this.buffer.slice(0, newline)) as Record<string, unknown>;
        this.buffer = this.buffer.slice(newline + 1);
        const waiter = this.waiting.shift();
        if (waiter) waiter(request);
        else this.queued.push(request);
      }
    });
  }

  greet(): this {
    return this.send({
      QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: [] },
    });
  }

  send(message: unknown): this {
    this.connection.write(JSON.stringify(message) + '\r\n');
    return this;
  }

  next(): Promise<Record<string, unknown>> {
    const request = this.queued.shift();
    if (request) return Promise.resolve(request);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Greets and answers `qmp_capabilities`, as QEMU does. */
  async handshake(): Promise<this> {
    this.greet();
    const request = await this.next();
    this.send({ return: {}, id: request['id'] });
    return this;
  }
}
