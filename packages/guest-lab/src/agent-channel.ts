/**
 * The host's side of the lab agent's channel: a Unix socket that QEMU serves for a virtio console in
 * the guest (`guest/agent.cjs` is the other end; the protocol is described there). One JSON object
 * per line; requests carry an id, replies and output chunks come back with it.
 *
 * QEMU's socket chardev serves one client at a time; a second one waits in the listen queue until the
 * first disconnects. Guests owned by a test keep one connection; the CLI connects per command.
 */
import { connect as netConnect, type Socket } from 'node:net';

export interface ExecOptions {
  /** Added to the agent's environment (PATH, HOME=/root, LANG=C.UTF-8, XDG_STATE_HOME=/run/devgate-lab/state). */
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  readonly input?: string | Buffer;
  /** The guest kills the command (SIGKILL) after this long. Default: none. */
  readonly timeoutMs?: number;
  readonly onStdout?: (chunk: Buffer) => void;
  readonly onStderr?: (chunk: Buffer) => void;
}

export interface ExecResult {
  readonly stdout: string;
  readonly stderr: string;
  /** null when killed by a signal. */
  readonly code: number | null;
  readonly signal: string | null;
  /** Wall time on the host, from sending the request to the exit status. */
  readonly ms: number;
}

/** A kernel uevent as the guest's agent saw it. Times are the guest's CLOCK_MONOTONIC, in seconds. */
export interface GuestUevent {
  readonly seq: number;
  readonly action: string;
  readonly devpath: string;
  readonly subsystem: string;
  /** When udevadm received it (the `KERNEL[...]` stamp). */
  readonly kernelTime: number;
  /** When the agent read it. */
  readonly agentTime: number;
  readonly props: Readonly<Record<string, string>>;
}

/** Uevent properties to match: exact values, or `/regex/` strings. */
export type UeventMatch = Readonly<Record<string, string>>;

export type WaitCondition =
  { readonly uevent: UeventMatch; readonly since?: number } | { readonly path: string; readonly exists?: boolean };

interface Reply {
  readonly id: number;
  readonly ok?: boolean;
  readonly error?: string;
  readonly [key: string]: unknown;
}

interface Pending {
  readonly onMessage: (message: Reply & { stream?: string; data?: string; exit?: number | null }) => boolean;
  readonly reject: (error: Error) => void;
}

export class AgentChannelClosed extends Error {}

export class AgentChannel {
  private nextId = 1;
  private buffer = '';
  private readonly pending = new Map<number, Pending>();
  private closeError?: Error;
  private helloResolve!: (hello: { pid: number; uptime: number }) => void;
  /** Resolves with the agent's greeting (sent once, when it starts; a late client never sees it). */
  readonly hello: Promise<{ pid: number; uptime: number }>;
  readonly closed: Promise<void>;

  private constructor(private readonly socket: Socket) {
    this.hello = new Promise((resolve) => (this.helloResolve = resolve));
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (error) => this.shutdown(error));
    socket.on('close', () => this.shutdown(new AgentChannelClosed('the guest closed the agent channel')));
  }

  /** Connects to the socket, retrying while it does not exist yet or refuses (QEMU starting). */
  static async connect(socketPath: string, options: { retryForMs?: number; signal?: AbortSignal } = {}) {
    const deadline = Date.now() + (options.retryForMs ?? 0);
    for (;;) {
      try {
        return await new Promise<AgentChannel>((resolve, reject) => {
          const socket = netConnect(socketPath);
          socket.once('connect', () => {
            socket.removeAllListeners('error');
            resolve(new AgentChannel(socket));
          });
          socket.once('error', reject);
        });
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        const retriable = code === 'ENOENT' || code === 'ECONNREFUSED';
        if (!retriable || Date.now() > deadline || options.signal?.aborted) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  }

  get connected(): boolean {
    return this.closeError === undefined;
  }

  /** A request with one reply. Rejects with the agent's error text, or when the channel closes. */
  request<T extends object = Record<string, unknown>>(
    op: string,
    args: Record<string, unknown> = {},
    options: { timeoutMs?: number } = {},
  ): Promise<T & Reply> {
    return new Promise((resolve, reject) => {
      const id = this.send(
        { op, ...args },
        (message) => {
          clearTimeout(timer);
          if (message.error !== undefined) reject(new AgentError(message.error));
          else resolve(message as T & Reply);
          return true;
        },
        reject,
      );
      const timer =
        options.timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              this.pending.delete(id);
              reject(new AgentError('timeout'));
            }, options.timeoutMs);
    });
  }

  /** Runs a command; resolves with its output and status (a non-zero status is not an error here). */
  exec(argv: readonly string[], options: ExecOptions = {}): { id: Promise<number>; result: Promise<ExecResult> } {
    const started = Date.now();
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let resolveId!: (id: number) => void;
    const idPromise = new Promise<number>((resolve) => (resolveId = resolve));
    const result = new Promise<ExecResult>((resolve, reject) => {
      const input = options.input === undefined ? undefined : Buffer.from(options.input).toString('base64');
      const id = this.send(
        {
          op: 'exec',
          argv,
          ...(options.env ? { env: options.env } : {}),
          ...(options.cwd ? { cwd: options.cwd } : {}),
          ...(input ? { stdin: input } : {}),
          ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
        },
        (message) => {
          if (message.stream === 'stdout' || message.stream === 'stderr') {
            const chunk = Buffer.from(message.data ?? '', 'base64');
            (message.stream === 'stdout' ? stdout : stderr).push(chunk);
            (message.stream === 'stdout' ? options.onStdout : options.onStderr)?.(chunk);
            return false;
          }
          if (message.error !== undefined) {
            reject(new AgentError(message.error));
            return true;
          }
          if ('exit' in message) {
            const spawnError = typeof message['spawnError'] === 'string' ? `${message['spawnError']}\n` : '';
            resolve({
              stdout: Buffer.concat(stdout).toString('utf8'),
              stderr: Buffer.concat(stderr).toString('utf8') + spawnError,
              code: message.exit ?? null,
              signal: (message['signal'] as string | null | undefined) ?? null,
              ms: Date.now() - started,
            });
            return true;
          }
          return false;
        },
        reject,
      );
      resolveId(id);
    });
    return { id: idPromise, result };
  }

  close(): void {
    this.shutdown(new AgentChannelClosed('closed by the host'));
    this.socket.destroy();
  }

  private send(request: Record<string, unknown>, onMessage: Pending['onMessage'], reject: (e: Error) => void): number {
    const id = this.nextId++;
    if (this.closeError) {
      reject(this.closeError);
      return id;
    }
    this.pending.set(id, { onMessage, reject });
    this.socket.write(JSON.stringify({ id, ...request }) + '\n');
    return id;
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue; // tty noise before the agent set raw mode
      }
      if (!message || typeof message !== 'object') continue;
      if (message['hello']) {
        this.helloResolve(message['hello'] as { pid: number; uptime: number });
        continue;
      }
      const id = message['id'];
      const pending = typeof id === 'number' ? this.pending.get(id) : undefined;
      if (pending && pending.onMessage(message as unknown as Reply)) this.pending.delete(id as number);
    }
  }

  private shutdown(error: Error): void {
    if (this.closeError) return;
    this.closeError = error;
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
  }
}

export class AgentError extends Error {}
