/**
 * A small QMP (QEMU Machine Protocol) client over a Unix socket.
 *
 * QMP is newline-delimited JSON: the server greets with `{"QMP": ...}`, the client must send
 * `qmp_capabilities` before anything else, and then every `{"execute", "id"}` gets one
 * `{"return"|"error", "id"}` back, interleaved with asynchronous `{"event"}` messages.
 *
 * One client at a time: QEMU's QMP chardev serves a single connection. A second client's connect()
 * succeeds (the kernel queues it) but it gets no greeting until the first one disconnects, so it
 * sees DG_QMP_TIMEOUT while waiting for the greeting. devgated is meant to be that one client.
 *
 * Why not an npm package: see docs/adr/0002-qmp-client.md.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { Subject, filter, firstValueFrom, throwError, timeout as rxTimeout, type Observable } from 'rxjs';
import { DevgateError, Errors } from '@devgate/core';

export interface QmpGreeting {
  readonly version: {
    readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number };
    readonly package: string;
  };
  readonly capabilities: readonly string[];
}

export interface QmpEvent {
  readonly event: string;
  readonly data?: Readonly<Record<string, unknown>>;
  readonly timestamp?: { readonly seconds: number; readonly microseconds: number };
}

/** DG_QMP_COMMAND_FAILED, carrying QMP's own error class and description. */
export type QmpCommandError = DevgateError & { readonly qmpClass: string; readonly qmpDesc: string };

export function isQmpCommandError(error: unknown): error is QmpCommandError {
  return error instanceof DevgateError && error.code === Errors.qmpCommandFailed.code;
}

export interface QmpClientOptions {
  /** Bound on connect + greeting + capabilities negotiation. Default 5000 ms. */
  readonly handshakeTimeoutMs?: number;
  /** Default per-command timeout. Default 10000 ms. */
  readonly commandTimeoutMs?: number;
}

export interface QmpConnectOptions extends QmpClientOptions {
  /**
   * Keep retrying while the socket is missing or refuses connections (QEMU still starting), for at
   * most this long. Default 0: one attempt.
   */
  readonly retryForMs?: number;
  /** Pause between attempts. Default 50 ms. */
  readonly retryIntervalMs?: number;
  /** Stops retrying (the current attempt still finishes or times out). */
  readonly signal?: AbortSignal;
}

interface Pending {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 5_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
/**
 * The longest line devgate reads. QEMU's largest answers (`query-qmp-schema`) are well under 1 MiB;
 * a peer that sends more without a newline is not speaking QMP, and must not fill devgated's memory.
 */
export const MAX_QMP_LINE = 16 * 1024 * 1024;
/** A greeting is a few hundred bytes. */
const MAX_GREETING_LINE = 64 * 1024;

export class QmpClient {
  private readonly pending = new Map<number, Pending>();
  private readonly eventSubject = new Subject<QmpEvent>();
  private nextId = 1;
  /** The start of a line whose newline has not come yet, in the chunks it came in. */
  private partial: string[] = [];
  private partialLength = 0;
  private closeReason?: DevgateError;
  private readonly commandTimeoutMs: number;
  /** Resolves once the socket is closed, whoever closed it. */
  readonly closed: Promise<void>;

  /** Every asynchronous event QEMU sends. Completes when the connection closes. */
  readonly events$: Observable<QmpEvent> = this.eventSubject.asObservable();

  private constructor(
    readonly socketPath: string,
    private readonly socket: Socket,
    readonly greeting: QmpGreeting,
    leftover: string,
    options: QmpClientOptions,
  ) {
    this.commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (error: NodeJS.ErrnoException) => this.shutdown(error.code ?? error.message));
    socket.on('close', () => this.shutdown('connection closed by QEMU'));
    if (leftover) this.onData(leftover);
  }

  /** Connects, reads the greeting and negotiates capabilities; retries only if `retryForMs` is set. */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const deadline = Date.now() + (options.retryForMs ?? 0);
    const interval = options.retryIntervalMs ?? 50;
    for (;;) {
      try {
        return await QmpClient.connectOnce(socketPath, options);
      } catch (error) {
        // Only "not there yet" is worth another try; a timeout or a protocol error is not.
        const retriable = error instanceof RetriableConnectError;
        if (!retriable || Date.now() + interval > deadline || options.signal?.aborted) {
          throw retriable ? Errors.qmpUnreachable({ socket: socketPath, reason: error.message }) : error;
        }
        await sleep(interval);
      }
    }
  }

  private static connectOnce(socketPath: string, options: QmpClientOptions): Promise<QmpClient> {
    const timeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    return new Promise<QmpClient>((resolve, reject) => {
      const socket = netConnect(socketPath);
      socket.setEncoding('utf8');
      let connected = false;
      let buffer = '';
      // Only our own listeners come off: net.Socket keeps internal ones of its own.
      const detach = () => {
        clearTimeout(timer);
        socket.off('connect', onConnect).off('error', onError).off('close', onClose).off('data', onData);
      };
      const fail = (error: Error) => {
        detach();
        socket.on('error', () => {}); // late errors from a socket we are abandoning
        socket.destroy();
        reject(error);
      };
      const timer = setTimeout(
        () => fail(Errors.qmpTimeout({ socket: socketPath, waitingFor: 'the greeting', timeoutMs })),
        timeoutMs,
      );
      const onConnect = () => (connected = true);
      const onError = (error: NodeJS.ErrnoException) => {
        if (!connected && (error.code === 'ENOENT' || error.code === 'ECONNREFUSED')) {
          fail(new RetriableConnectError(error.code));
        } else {
          fail(Errors.qmpUnreachable({ socket: socketPath, reason: error.code ?? error.message }));
        }
      };
      const onClose = () => fail(Errors.qmpDisconnected({ socket: socketPath, reason: 'closed before the greeting' }));
      const onData = (chunk: string) => {
        buffer += chunk;
        const newline = buffer.indexOf('\n');
        if (newline < 0) {
          if (buffer.length > MAX_GREETING_LINE) {
            fail(Errors.qmpProtocol({ socket: socketPath, reason: `no greeting in ${buffer.length} bytes` }));
          }
          return;
        }
        const line = buffer.slice(0, newline);
        let greeting: QmpGreeting | undefined;
        try {
          greeting = (JSON.parse(line) as { QMP?: QmpGreeting }).QMP;
        } catch {
          // reported below
        }
        if (!greeting) {
          fail(Errors.qmpProtocol({ socket: socketPath, reason: `expected a greeting, got ${truncate(line)}` }));
          return;
        }
        detach();
        const client = new QmpClient(socketPath, socket, greeting, buffer.slice(newline + 1), options);
        // Capabilities negotiation shares the handshake bound. We enable no optional capability
        // (not even `oob`), so QEMU runs commands strictly in order.
        client.execute('qmp_capabilities', undefined, { timeoutMs }).then(
          () => resolve(client),
          (error: Error) => {
            client.destroy();
            reject(error);
          },
        );
      };
      socket.on('connect', onConnect).on('error', onError).on('close', onClose).on('data', onData);
    });
  }

  get connected(): boolean {
    return this.closeReason === undefined;
  }

  /**
   * Runs one command and resolves with its `return` value. Rejects with DG_QMP_COMMAND_FAILED
   * (QMP's error class and desc attached), DG_QMP_TIMEOUT, or DG_QMP_DISCONNECTED.
   * After a timeout the connection stays usable: a late reply is recognised by its id and dropped.
   */
  execute<T = unknown>(
    command: string,
    args?: Readonly<Record<string, unknown>>,
    options: { readonly timeoutMs?: number } = {},
  ): Promise<T> {
    if (this.closeReason) return Promise.reject(this.closeReason);
    const id = this.nextId++;
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(Errors.qmpTimeout({ socket: this.socketPath, waitingFor: `'${command}'`, timeoutMs }));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject, timer });
      const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(JSON.stringify(message) + '\n');
    });
  }

  /**
   * The next event called `name` that satisfies `predicate`. Subscribe before sending the command
   * that triggers it: call this first, then `execute`, then await the promise.
   */
  waitForEvent(
    name: string,
    predicate: (event: QmpEvent) => boolean = () => true,
    timeoutMs: number = this.commandTimeoutMs,
  ): Promise<QmpEvent> {
    if (this.closeReason) return Promise.reject(this.closeReason);
    const events = this.events$.pipe(
      filter((event) => event.event === name && predicate(event)),
      rxTimeout({
        first: timeoutMs,
        with: () =>
          throwError(() => Errors.qmpTimeout({ socket: this.socketPath, waitingFor: `event ${name}`, timeoutMs })),
      }),
    );
    // When the connection closes the subject completes; report that as a disconnect.
    return firstValueFrom(events).catch((error: unknown) => {
      throw error instanceof DevgateError ? error : (this.closeReason ?? error);
    });
  }

  /** Closes the connection; pending commands reject with DG_QMP_DISCONNECTED. */
  async close(): Promise<void> {
    this.shutdown('closed by the client');
    this.socket.end();
    // Do not wait forever for the peer's FIN.
    const timer = setTimeout(() => this.socket.destroy(), 1_000);
    await this.closed;
    clearTimeout(timer);
  }

  /** Closes at once, without a graceful end. */
  destroy(): void {
    this.shutdown('closed by the client');
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    // Only the new chunk is searched, and the parts of a long line are joined once, when it ends:
    // re-scanning a growing buffer for each chunk made a 16 MiB answer take seconds.
    let start = 0;
    let newline: number;
    while ((newline = chunk.indexOf('\n', start)) >= 0) {
      const line = (this.partial.join('') + chunk.slice(start, newline)).trim(); // QEMU ends lines with \r\n
      this.partial = [];
      this.partialLength = 0;
      start = newline + 1;
      if (line) this.onMessage(line);
    }
    if (start < chunk.length) {
      this.partial.push(chunk.slice(start));
      this.partialLength += chunk.length - start;
    }
    if (this.partialLength > MAX_QMP_LINE && !this.closeReason) {
      this.shutdown(`a message longer than ${MAX_QMP_LINE} bytes`);
      this.partial = [];
      this.partialLength = 0;
      this.socket.destroy();
    }
  }

  private onMessage(line: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      parsed = undefined;
    }
    // Every QMP message is an object; anything else (`null`, a number) is not QMP.
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
      this.shutdown(`unparsable message ${truncate(line)}`);
      this.socket.destroy();
      return;
    }
    const message = parsed as Record<string, unknown>;
    if (typeof message['event'] === 'string') {
      this.eventSubject.next(message as unknown as QmpEvent);
      return;
    }
    // Replies carry the id we sent. One without an id answers a request QEMU could not parse; QMP
    // runs requests in order, so it belongs to the oldest pending one.
    const id = typeof message['id'] === 'number' ? message['id'] : this.pending.keys().next().value;
    const request = id === undefined ? undefined : this.pending.get(id);
    if (!request) return; // a late reply to a command that already timed out
    this.pending.delete(id!);
    clearTimeout(request.timer);
    if ('error' in message) {
      const qmpError = (message['error'] ?? {}) as { class?: string; desc?: string };
      const errorClass = qmpError.class ?? 'GenericError';
      const desc = qmpError.desc ?? '';
      const error = Errors.qmpCommandFailed({ command: request.command, errorClass, desc });
      request.reject(Object.assign(error, { qmpClass: errorClass, qmpDesc: desc }));
    } else {
      request.resolve(message['return']);
    }
  }

  /** Marks the connection dead once: rejects every pending request and completes events$. */
  private shutdown(reason: string): void {
    if (this.closeReason) return;
    this.closeReason = Errors.qmpDisconnected({ socket: this.socketPath, reason });
    for (const request of this.pending.values()) {
      clearTimeout(request.timer);
      request.reject(this.closeReason);
    }
    this.pending.clear();
    this.eventSubject.complete();
  }
}

/** Convenience for `QmpClient.connect`. */
export function connectQmp(socketPath: string, options?: QmpConnectOptions): Promise<QmpClient> {
  return QmpClient.connect(socketPath, options);
}

/** The socket is not there yet, or nobody listens on it: worth another attempt. */
class RetriableConnectError extends Error {}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function truncate(text: string, max = 120): string {
  return text.length > max ? `${text.slice(0, max)}...` : text;
}
