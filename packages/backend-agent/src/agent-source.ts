/**
 * A backend VM's devices, as its devgate-agent reports them: a DeviceSource for devgated and the CLI.
 *
 * The agent is untrusted (a USB VM may be compromised by the very device it handles). It sends raw
 * sysfs records only; this source builds a host tree from them with the same parser rules as a
 * recording, under the backend name devgate configured, and devgate's own drivers make the devices.
 * So a backend can only ever speak of its own devices, and every string passes the same sanitizing
 * parsers as any other backend's. Every line is bounded and schema-checked (parse-agent-message.ts);
 * floods are coalesced, then cut off; a stalled channel is cut off by the ping; a request the agent
 * does not answer times out. A cut-off agent's devices are gone at once (the kernel detaches what
 * was attached from them), the incident is reported on `incidents$` (devgated audits it), and the
 * agent may connect again after a back-off. Nothing here ever waits on the agent synchronously.
 *
 * Data paths (`dataPath`): the agent exports the device onto one of the VM's export ports, whose
 * host side is a Unix socket of the VM's QEMU; the frontend's QEMU connects to that socket itself
 * (an NBD client for a block device, a usb-redir chardev for a USB device), so the bytes go from
 * QEMU to QEMU without devgated and the host's kernel never sees the device.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { type Duplex } from 'node:stream';
import { BehaviorSubject, Observable, Subject, type Subscriber } from 'rxjs';
import {
  type AttachSpec,
  type DeviceInfo,
  type DeviceSource,
  type DomainName,
  Errors,
  HostTree,
  type RawInputEvent,
  portLabel,
  sanitizeText,
} from '@devgate/core';
import { LineReader, LineTooLong } from './line-reader.js';
import { AgentViolation, hostTreeOf, parseAgentMessage } from './parse-agent-message.js';
import {
  type AgentLimits,
  type AgentMessage,
  DEFAULT_LIMITS,
  type ExportSpec,
  type HelloMessage,
  type HostRequest,
  type InputForwardSpec,
  MAX_FORWARD_NODES,
  PROTOCOL_VERSION,
} from './protocol.js';

export interface AgentSourceOptions {
  /** The backend domain's name: devgate's, from its configuration or registry, never the agent's. */
  readonly backend: DomainName;
  /** The host side of the control channel: a Unix socket (a QEMU chardev, or a test's). */
  readonly control: string;
  /** Export port name -> the Unix socket of its host side. */
  readonly exportPorts?: Readonly<Record<string, string>>;
  readonly limits?: Partial<AgentLimits>;
  /** Replies to export requests (starting qemu-nbd in a TCG guest takes a while). Default 20 s. */
  readonly requestTimeoutMs?: number;
  /** A ping goes out this often once the agent said hello. Default 5 s. */
  readonly pingIntervalMs?: number;
  /** A ping unanswered this long means a stalled channel: cut off. Default 10 s. */
  readonly pingTimeoutMs?: number;
  /** An export that no frontend connected to within this long is withdrawn by the agent. Default 30 s. */
  readonly armTimeoutMs?: number;
  /** Reconnect back-off after a disconnect (from min, doubling to max). Default 250 ms to 30 s. */
  readonly reconnectMinMs?: number;
  readonly reconnectMaxMs?: number;
  /** After a cut-off, the first reconnect waits at least this long. Default 5 s. */
  readonly cutOffBackoffMs?: number;
  /** The transport; default: a Unix socket connection to `address`. */
  readonly connect?: (address: string) => Duplex;
}

export type AgentIncident =
  | { readonly type: 'connected'; readonly backend: DomainName; readonly agent: string }
  | { readonly type: 'disconnected'; readonly backend: DomainName; readonly reason: string }
  | {
      readonly type: 'cut-off';
      readonly backend: DomainName;
      /** DG_AGENT_VIOLATION for a broken protocol or a flood, DG_AGENT_TIMEOUT for a stall. */
      readonly code: string;
      readonly reason: string;
    }
  | { readonly type: 'export-ended'; readonly backend: DomainName; readonly export: string; readonly reason: string };

type State = 'idle' | 'connecting' | 'waiting-hello' | 'ready' | 'cut-off' | 'disposed';

interface PendingRequest {
  readonly resolve: (reply: Extract<AgentMessage, { type: 'reply' }>) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

interface LiveExport {
  readonly id: string;
  readonly port: string;
  readonly device: string;
}

interface LiveForward {
  readonly nodes: readonly string[];
  readonly subscriber: Subscriber<readonly RawInputEvent[]>;
}

const EMPTY_TREE = new HostTree([]);

export class AgentSource implements DeviceSource {
  readonly id: string;
  readonly backend: DomainName;
  readonly hotplug = 'agent';
  readonly trees$: Observable<HostTree>;
  /** Connections, disconnections, cut-offs and ended exports, for the audit. Hot. */
  readonly incidents$: Observable<AgentIncident>;

  private readonly limits: AgentLimits;
  private readonly tree = new BehaviorSubject<HostTree>(EMPTY_TREE);
  private readonly incidents = new Subject<AgentIncident>();
  private state: State = 'idle';
  private socket?: Duplex;
  private reader?: LineReader;
  private hello?: HelloMessage;
  private preHelloBytes = 0;
  private subscribers = 0;
  private nextRequestId = 1;
  private readonly pending = new Map<number, PendingRequest>();
  private readonly exports = new Map<string, LiveExport>();
  /** Ports in use: by a live export, by an export from before a restart, or being drained. */
  private readonly busyPorts = new Set<string>();
  /**
   * Busy ports of exports devgated does not know: the hello said so (exports made before devgated
   * restarted or reconnected). Each stays busy until an asked-for hello no longer lists it.
   */
  private readonly foreignPorts = new Set<string>();
  /** Whether a hello was asked for to learn which foreign ports are still busy, and not yet answered. */
  private busyAsked = false;
  /** Whether an export devgated does not know ended unclean: foreign ports freed from then on are drained. */
  private foreignUnclean = false;
  /** Input forwards by id: whose events go to which subscriber. */
  private readonly forwards = new Map<string, LiveForward>();
  private lastSeq = -1;
  private treeTokens: number;
  private tokensAt = Date.now();
  private pendingTree?: { records: Parameters<typeof hostTreeOf>[0]; usage: Parameters<typeof hostTreeOf>[1] };
  private treeTimer?: NodeJS.Timeout;
  private floodWindowStart = Date.now();
  private floodCount = 0;
  private floodBytes = 0;
  private floodParseNs = 0n;
  private pingTimer?: NodeJS.Timeout;
  private reconnectTimer?: NodeJS.Timeout;
  private reconnectDelay: number;
  private readyWaiters: (() => void)[] = [];
  /** Asking the agent for its hello: a session that outlived a quick reconnect never says it again. */
  private helloTimer?: NodeJS.Timeout;
  /** Hellos asked for and not yet answered: the agent answers each with one. */
  private hellosAsked = 0;
  private treeSeen = false;

  constructor(private readonly options: AgentSourceOptions) {
    this.backend = options.backend;
    this.id = `agent:${options.backend}`;
    const limits = { ...DEFAULT_LIMITS, ...options.limits };
    // Room for one stale write (a tree) before the hello, unless said otherwise.
    this.limits = options.limits?.maxPreHelloBytes
      ? limits
      : { ...limits, maxPreHelloBytes: limits.maxTreeBytes + 64 * 1024 };
    this.treeTokens = this.limits.treesPerSecond;
    this.reconnectDelay = options.reconnectMinMs ?? 250;
    this.incidents$ = this.incidents.asObservable();
    // Connected while someone listens (the kernel's drivers), like the local host's uevent monitor.
    this.trees$ = new Observable<HostTree>((subscriber) => {
      if (this.subscribers++ === 0) this.open();
      const inner = this.tree.subscribe(subscriber);
      return () => {
        inner.unsubscribe();
        if (--this.subscribers === 0) this.close('nobody listens');
      };
    });
  }

  /** Whether the agent said hello and its channel is up. */
  get connected(): boolean {
    return this.state === 'ready';
  }

  /** The agent's own name and version, once it said hello (untrusted text, printable ASCII). */
  get agentName(): string | undefined {
    return this.hello?.agent;
  }

  /**
   * Resolves once the agent's first tree is in (or at `timeoutMs`): what a one-shot command or a
   * restarting devgated waits for before it reads the devices back.
   */
  whenReady(timeoutMs = 10_000): Promise<boolean> {
    if (this.treeSeen) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.readyWaiters = this.readyWaiters.filter((w) => w !== wake);
        resolve(false);
      }, timeoutMs);
      timer.unref?.();
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.readyWaiters.push(wake);
    });
  }

  // -- the connection

  private open(): void {
    if (this.state === 'disposed' || this.socket) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.state = 'connecting';
    let socket: Duplex;
    try {
      socket = (this.options.connect ?? ((address) => net.connect(address)))(this.options.control);
    } catch (error) {
      this.state = 'idle';
      this.scheduleReconnect(this.reconnectDelay, (error as Error).message);
      return;
    }
    this.socket = socket;
    this.reader = new LineReader(this.limits.maxTreeBytes);
    this.preHelloBytes = 0;
    this.hello = undefined;
    this.lastSeq = -1;
    socket.on('connect', () => {
      if (this.socket === socket && this.state === 'connecting') this.waitForHello();
    });
    // A socket handed over already connected (a test's transport) emits no 'connect'.
    if ((socket as net.Socket).connecting === false || !(socket instanceof net.Socket)) this.waitForHello();
    socket.on('data', (chunk: Buffer) => {
      if (this.socket === socket) this.onData(chunk);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (this.socket === socket) this.onClosed('the channel closed');
    });
  }

  /**
   * The agent says hello when a connection starts; if the previous connection went and this one came
   * before the VM's kernel told the agent (a quick reconnect), its session simply goes on. So the
   * hello is asked for, if it has not come within a second, and again every few seconds.
   */
  private waitForHello(): void {
    this.state = 'waiting-hello';
    const ask = (delayMs: number) => {
      this.helloTimer = setTimeout(() => {
        if (this.state !== 'waiting-hello' || !this.socket) return;
        this.askHello();
        ask(3_000);
      }, delayMs);
      this.helloTimer.unref?.();
    };
    ask(1_000);
  }

  private askHello(): void {
    this.hellosAsked++;
    this.socket?.write(
      JSON.stringify({ v: PROTOCOL_VERSION, type: 'request', id: this.nextRequestId++, op: 'hello' }) + '\n',
    );
  }

  private onData(chunk: Buffer): void {
    if (!this.countTraffic(chunk.length, 0)) return;
    let lines: string[];
    try {
      lines = this.reader!.push(chunk);
    } catch (error) {
      if (error instanceof LineTooLong)
        return this.cutOff('DG_AGENT_VIOLATION', `a line longer than ${error.limit} bytes`);
      throw error;
    }
    if (!this.countTraffic(0, lines.length)) return;
    for (const line of lines) {
      if (this.state !== 'waiting-hello' && this.state !== 'ready') return;
      const started = process.hrtime.bigint();
      this.onLine(line);
      this.floodParseNs += process.hrtime.bigint() - started;
      // After each line, not each chunk: one chunk may hold many costly lines.
      if (this.floodParseNs > BigInt(this.limits.floodParseMs) * 1_000_000n) {
        return this.cutOff(
          'DG_AGENT_VIOLATION',
          `a flood: more than ${this.limits.floodParseMs} ms of devgated's time within ${this.limits.floodWindowMs} ms`,
        );
      }
    }
  }

  private onLine(line: string): void {
    if (this.state === 'waiting-hello') {
      // What a previous session left in the port may come first: skip it (bounded) until the hello.
      let message: AgentMessage | undefined;
      try {
        message = parseAgentMessage(line, this.limits);
      } catch {
        message = undefined;
      }
      if (message?.type !== 'hello') {
        this.preHelloBytes += line.length + 1;
        if (this.preHelloBytes > this.limits.maxPreHelloBytes) {
          this.cutOff('DG_AGENT_VIOLATION', `more than ${this.limits.maxPreHelloBytes} bytes before its hello`);
        }
        return;
      }
      return this.onHello(message);
    }
    let message: AgentMessage;
    try {
      message = parseAgentMessage(line, this.limits);
    } catch (error) {
      if (error instanceof AgentViolation) return this.cutOff('DG_AGENT_VIOLATION', error.reason);
      throw error;
    }
    switch (message.type) {
      case 'hello':
        // An answer to a request of ours (the first one may cross the agent's own hello).
        if (this.hellosAsked === 0) return this.cutOff('DG_AGENT_VIOLATION', 'a second hello');
        this.hellosAsked--;
        return this.releaseForeignPorts(message);
      case 'tree':
        return this.onTree(message);
      case 'reply':
        return this.onReply(message);
      case 'export-ended':
        return this.onExportEnded(message);
      case 'input':
        return this.onInput(message);
      case 'input-ended':
        this.forwards.get(message.forward)?.subscriber.complete();
        this.forwards.delete(message.forward);
        return;
    }
  }

  /** A forward's events; those of a forward devgated stopped (sent before the agent knew) are dropped. */
  private onInput(message: Extract<AgentMessage, { type: 'input' }>): void {
    const live = this.forwards.get(message.forward);
    if (!live) return;
    const events: RawInputEvent[] = [];
    for (const [index, type, code, value] of message.events) {
      const node = live.nodes[index];
      if (node === undefined)
        return this.cutOff('DG_AGENT_VIOLATION', `input: node ${index} of a forward of ${live.nodes.length}`);
      events.push({ node, type, code, value });
    }
    live.subscriber.next(events);
  }

  private onHello(hello: HelloMessage): void {
    this.hello = hello;
    this.state = 'ready';
    clearTimeout(this.helloTimer);
    // Ports serving exports made before devgated (re)connected stay out of the pool until they end.
    for (const port of hello.busy ?? []) {
      this.busyPorts.add(port);
      this.foreignPorts.add(port);
    }
    this.incidents.next({ type: 'connected', backend: this.backend, agent: hello.agent });
    this.schedulePing();
  }

  private onTree(message: Extract<AgentMessage, { type: 'tree' }>): void {
    if (message.seq <= this.lastSeq) {
      return this.cutOff('DG_AGENT_VIOLATION', `tree ${message.seq} after tree ${this.lastSeq}`);
    }
    this.lastSeq = message.seq;
    this.pendingTree = { records: message.records, usage: message.usage };
    this.applyTreeSoon();
  }

  /** Trees are applied at most `treesPerSecond`; in between, only the newest is kept. */
  private applyTreeSoon(): void {
    if (this.treeTimer) return;
    const now = Date.now();
    const rate = this.limits.treesPerSecond;
    this.treeTokens = Math.min(rate, this.treeTokens + ((now - this.tokensAt) * rate) / 1000);
    this.tokensAt = now;
    if (this.treeTokens >= 1) {
      this.treeTokens -= 1;
      return this.applyTree();
    }
    this.treeTimer = setTimeout(
      () => {
        this.treeTimer = undefined;
        this.applyTreeSoon();
      },
      Math.ceil(((1 - this.treeTokens) * 1000) / rate),
    );
  }

  private applyTree(): void {
    const pending = this.pendingTree;
    this.pendingTree = undefined;
    if (!pending || this.state !== 'ready') return;
    this.tree.next(hostTreeOf(pending.records, pending.usage));
    if (!this.treeSeen) {
      this.treeSeen = true;
      this.readyWaiters.splice(0).forEach((wake) => wake());
    }
  }

  private onReply(reply: Extract<AgentMessage, { type: 'reply' }>): void {
    const pending = this.pending.get(reply.id);
    if (pending) {
      this.pending.delete(reply.id);
      clearTimeout(pending.timer);
      return pending.resolve(reply);
    }
    // A late reply to a request that timed out is harmless; one to a request never made is not.
    if (reply.id >= this.nextRequestId) this.cutOff('DG_AGENT_VIOLATION', `a reply to request ${reply.id}, never made`);
  }

  private onExportEnded(message: Extract<AgentMessage, { type: 'export-ended' }>): void {
    const live = this.exports.get(message.export);
    if (!live) {
      // An export of an earlier session (on a foreign port), or one devgated already withdrew. The
      // message names no port: ask for the hello again, whose busy ports are those still serving.
      if (this.foreignPorts.size === 0) return;
      if (!message.clean) this.foreignUnclean = true;
      if (!this.busyAsked) {
        this.busyAsked = true;
        this.askHello();
      }
      return;
    }
    this.exports.delete(message.export);
    this.incidents.next({
      type: 'export-ended',
      backend: this.backend,
      export: message.export,
      reason: sanitizeText(message.reason, 256) ?? '',
    });
    if (message.clean) this.busyPorts.delete(live.port);
    else void this.drain(live.port);
  }

  /**
   * Frees the foreign ports an asked-for hello no longer lists as busy: their exports ended. Never one
   * devgated itself exports on. Which export left which port unclean is not known: after any did,
   * each is drained first.
   */
  private releaseForeignPorts(hello: HelloMessage): void {
    this.busyAsked = false;
    const stillBusy = new Set(hello.busy ?? []);
    for (const port of this.foreignPorts) {
      if (stillBusy.has(port)) continue;
      this.foreignPorts.delete(port);
      if ([...this.exports.values()].some((live) => live.port === port)) continue;
      if (this.foreignUnclean) void this.drain(port);
      else this.busyPorts.delete(port);
    }
  }

  /**
   * Counts what arrives; a peer over the flood bounds is cut off. Returns false once cut off. The
   * window is fixed: at most twice the bound gets in across a window boundary, still bounded.
   */
  private countTraffic(bytes: number, messages: number): boolean {
    const now = Date.now();
    if (now - this.floodWindowStart >= this.limits.floodWindowMs) {
      this.floodWindowStart = now;
      this.floodCount = 0;
      this.floodBytes = 0;
      this.floodParseNs = 0n;
    }
    this.floodCount += messages;
    this.floodBytes += bytes;
    if (this.floodCount > this.limits.floodMessages || this.floodBytes > this.limits.floodBytes) {
      const what =
        this.floodCount > this.limits.floodMessages
          ? `${this.limits.floodMessages} messages`
          : `${this.limits.floodBytes} bytes`;
      this.cutOff('DG_AGENT_VIOLATION', `a flood: more than ${what} within ${this.limits.floodWindowMs} ms`);
      return false;
    }
    return true;
  }

  private schedulePing(): void {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(() => {
      if (this.state !== 'ready') return;
      const timeoutMs = this.options.pingTimeoutMs ?? 10_000;
      this.request({ op: 'ping' }, timeoutMs).then(
        () => {
          // Back-off starts over only for an agent that stayed and answered, not one that says hello and hangs up.
          this.reconnectDelay = this.options.reconnectMinMs ?? 250;
          this.schedulePing();
        },
        (error: Error) => {
          if ((error as { code?: string }).code === Errors.agentTimeout.code && this.state === 'ready') {
            this.cutOff('DG_AGENT_TIMEOUT', `no answer to a ping within ${timeoutMs} ms (a stalled channel)`);
          }
        },
      );
    }, this.options.pingIntervalMs ?? 5_000);
    this.pingTimer.unref?.();
  }

  /** Cuts the agent off: its devices go at once, what it was asked fails, and it is reported. */
  private cutOff(code: 'DG_AGENT_VIOLATION' | 'DG_AGENT_TIMEOUT', reason: string): void {
    if (this.state === 'cut-off' || this.state === 'disposed') return;
    this.state = 'cut-off';
    this.incidents.next({ type: 'cut-off', backend: this.backend, code, reason });
    this.teardown(
      code === 'DG_AGENT_VIOLATION'
        ? Errors.agentViolation({ backend: this.backend, reason })
        : Errors.agentTimeout({
            backend: this.backend,
            waitingFor: 'a ping',
            timeoutMs: this.options.pingTimeoutMs ?? 10_000,
          }),
    );
    this.scheduleReconnect(Math.max(this.options.cutOffBackoffMs ?? 5_000, this.reconnectDelay), reason);
  }

  private onClosed(reason: string): void {
    if (this.state === 'disposed' || this.state === 'cut-off') return;
    const wasReady = this.state === 'ready';
    this.state = 'idle';
    this.teardown(Errors.agentUnavailable({ backend: this.backend, reason }));
    if (wasReady) this.incidents.next({ type: 'disconnected', backend: this.backend, reason });
    this.scheduleReconnect(this.reconnectDelay, reason);
  }

  /** Drops the connection and everything that depended on it; the backend's devices are gone. */
  private teardown(error: Error): void {
    const socket = this.socket;
    this.socket = undefined;
    this.reader = undefined;
    socket?.destroy();
    clearTimeout(this.pingTimer);
    clearTimeout(this.helloTimer);
    this.hellosAsked = 0;
    this.busyAsked = false;
    this.foreignUnclean = false;
    clearTimeout(this.treeTimer);
    this.treeTimer = undefined;
    this.pendingTree = undefined;
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.pending.clear();
    for (const forward of this.forwards.values()) forward.subscriber.error(error);
    this.forwards.clear();
    // Exports live in the agent and go on without devgated (the kernel detaches their frontends when
    // the devices vanish, and they end); the next hello lists those still serving as busy.
    this.exports.clear();
    this.busyPorts.clear();
    this.foreignPorts.clear();
    if (this.tree.value !== EMPTY_TREE) this.tree.next(EMPTY_TREE);
  }

  private scheduleReconnect(delayMs: number, _reason: string): void {
    if (this.state === 'disposed' || this.subscribers === 0) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.state !== 'disposed' && this.subscribers > 0) {
        this.state = 'idle';
        this.open();
      }
    }, delayMs);
    this.reconnectTimer.unref?.();
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, this.options.reconnectMaxMs ?? 30_000);
  }

  private close(reason: string): void {
    if (this.state === 'disposed') return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.state = 'idle';
    this.teardown(Errors.agentUnavailable({ backend: this.backend, reason }));
  }

  /** One request, answered or timed out; never blocks anything else. */
  private request(body: DistributiveOmit<HostRequest, 'v' | 'type' | 'id'>, timeoutMs: number) {
    return new Promise<Extract<AgentMessage, { type: 'reply' }>>((resolve, reject) => {
      if (this.state !== 'ready' || !this.socket) {
        return reject(Errors.agentUnavailable({ backend: this.backend, reason: this.unavailableReason() }));
      }
      const id = this.nextRequestId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(Errors.agentTimeout({ backend: this.backend, waitingFor: `'${body.op}'`, timeoutMs }));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.socket.write(JSON.stringify({ v: PROTOCOL_VERSION, type: 'request', id, ...body }) + '\n');
    });
  }

  private unavailableReason(): string {
    switch (this.state) {
      case 'cut-off':
        return 'it was cut off for breaking the protocol';
      case 'disposed':
        return 'devgate stopped listening to it';
      case 'ready':
        return 'its channel is closing';
      default:
        return 'it has not said hello (is it running?)';
    }
  }

  // -- data paths

  /**
   * Asks the agent to export the device onto a free export port, and says where the frontend's QEMU
   * connects: a block device as an NBD export (`nbdSocket` + `nbdExport` on the driver's spec), a
   * USB device through usbredir (kind `usb-redir`, with the vendor and product the frontend's QEMU
   * lets through).
   */
  /**
   * What a spec becomes on this data path: a block device stays `block` (an NBD node), a USB device is
   * `usb-redir`; nothing else has a path from a backend VM. The kernel asks before anything is
   * exported, so a frontend whose connector cannot take it is refused first. Keep it in step with the
   * cases of `dataPath` below: a kind it does not name is refused here before dataPath could take it.
   */
  routesKind(kind: string): string | undefined {
    return kind === 'block' ? 'block' : kind === 'usb-host' ? 'usb-redir' : undefined;
  }

  async dataPath(device: DeviceInfo, spec: AttachSpec): Promise<AttachSpec> {
    const label = portLabel(device.port);
    if (this.state !== 'ready') {
      throw Errors.agentUnavailable({ backend: this.backend, reason: this.unavailableReason() });
    }
    let exportSpec: DistributiveOmit<ExportSpec, 'id' | 'port'>;
    switch (spec.kind) {
      case 'block': {
        const majorMinor = device.data['major-minor'];
        if (typeof majorMinor !== 'string') {
          throw Errors.deviceChanged({ device: label, reason: 'it was listed without a major:minor' });
        }
        const record = this.tree.value.devices('block').find((r) => r.devpath.endsWith(`/${device.port.portId}`));
        const now = record ? `${record.properties.MAJOR}:${record.properties.MINOR}` : undefined;
        if (now !== majorMinor) {
          throw Errors.deviceChanged({ device: label, reason: `it is ${now ?? 'gone'} now, listed as ${majorMinor}` });
        }
        exportSpec = {
          kind: 'nbd',
          devname: device.port.portId,
          majorMinor,
          readOnly: spec.params.readOnly === true,
        };
        break;
      }
      case 'usb-host': {
        if (spec.params.vendorid !== undefined) {
          throw Errors.unsupportedOption({
            option: 'by',
            message: `by=id selects a device on this host; ${this.backend} passes its devices on by port`,
          });
        }
        const vendorId = String(device.data['vendor-id'] ?? '');
        const productId = String(device.data['product-id'] ?? '');
        if (!/^[0-9a-f]{4}$/.test(vendorId) || !/^[0-9a-f]{4}$/.test(productId)) {
          throw Errors.usbIdUnknown({ device: label });
        }
        exportSpec = { kind: 'usbredir', busid: device.port.portId, vendorId, productId };
        break;
      }
      default:
        throw Errors.unsupported({ driverId: this.id, operation: `a data path for '${spec.kind}'` });
    }
    if (!this.hello?.exports.includes(exportSpec.kind)) {
      throw Errors.agentRefused({
        backend: this.backend,
        device: label,
        reason: `its agent cannot export ${exportSpec.kind}`,
      });
    }
    const port = this.freePort();
    if (!port) {
      throw Errors.noFreeExportPort({
        backend: this.backend,
        ports: Object.keys(this.options.exportPorts ?? {}).length,
      });
    }
    const id = `e${randomBytes(6).toString('hex')}`;
    this.busyPorts.add(port.name);
    this.exports.set(id, { id, port: port.name, device: label });
    let reply: Extract<AgentMessage, { type: 'reply' }>;
    try {
      reply = await this.request(
        {
          op: 'export',
          export: {
            ...exportSpec,
            id,
            port: port.name,
            armTimeoutMs: this.options.armTimeoutMs ?? 30_000,
          } as ExportSpec,
        },
        this.options.requestTimeoutMs ?? 20_000,
      );
    } catch (error) {
      this.exports.delete(id);
      // Whatever the agent did, the port may hold a greeting for nobody: drain it before reuse.
      if (this.state === 'ready') void this.drain(port.name);
      throw error;
    }
    if (!reply.ok) {
      this.exports.delete(id);
      this.busyPorts.delete(port.name);
      // In use in the USB VM (its own check at hand-over): the refusal the host's hand-over gives.
      if (reply.error?.code === 'DEVICE_IN_USE') {
        throw Errors.deviceInUse({ device: label, reason: sanitizeText(reply.error.message, 200) ?? 'in use' });
      }
      throw Errors.agentRefused({
        backend: this.backend,
        device: label,
        reason: `${reply.error?.code ?? 'ERROR'}: ${sanitizeText(reply.error?.message, 200) ?? ''}`,
      });
    }
    if (exportSpec.kind === 'nbd') {
      return { ...spec, params: { ...spec.params, nbdSocket: port.path, nbdExport: id } };
    }
    return {
      kind: 'usb-redir',
      params: {
        socket: port.path,
        vendorid: parseInt(exportSpec.vendorId, 16),
        productid: parseInt(exportSpec.productId, 16),
      },
      options: spec.options,
    };
  }

  /**
   * The events of an input device's event nodes in the VM (Qubes' input proxy), while subscribed.
   * Each node must be the one listed (its major:minor, checked here and again by the agent).
   */
  inputEvents(device: DeviceInfo, nodes: readonly string[]): Observable<readonly RawInputEvent[]> {
    return new Observable<readonly RawInputEvent[]>((subscriber) => {
      const label = portLabel(device.port);
      let spec: InputForwardSpec;
      try {
        spec = this.forwardSpec(device, nodes);
      } catch (error) {
        subscriber.error(error);
        return;
      }
      this.forwards.set(spec.id, { nodes, subscriber });
      const timeoutMs = this.options.requestTimeoutMs ?? 20_000;
      this.request({ op: 'input-forward', forward: spec }, timeoutMs).then(
        (reply) => {
          if (reply.ok || !this.forwards.delete(spec.id)) return;
          subscriber.error(
            Errors.agentRefused({
              backend: this.backend,
              device: label,
              reason: `${reply.error?.code ?? 'ERROR'}: ${sanitizeText(reply.error?.message, 200) ?? ''}`,
            }),
          );
        },
        (error: Error) => this.forwards.delete(spec.id) && subscriber.error(error),
      );
      return () => {
        if (this.forwards.delete(spec.id) && this.state === 'ready') {
          this.request({ op: 'input-stop', forward: spec.id }, timeoutMs).catch(() => undefined);
        }
      };
    });
  }

  private forwardSpec(device: DeviceInfo, nodes: readonly string[]): InputForwardSpec {
    const label = portLabel(device.port);
    if (this.state !== 'ready')
      throw Errors.agentUnavailable({ backend: this.backend, reason: this.unavailableReason() });
    if (!this.hello?.exports.includes('input')) {
      throw Errors.agentRefused({ backend: this.backend, device: label, reason: 'its agent cannot forward input' });
    }
    if (nodes.length === 0 || nodes.length > MAX_FORWARD_NODES) {
      throw Errors.deviceChanged({ device: label, reason: `${nodes.length} event nodes to forward` });
    }
    const listedNodes = String(device.data['event-nodes'] ?? '').split(',');
    const listedDevices = String(device.data['event-devices'] ?? '').split(',');
    const records = this.tree.value.devices('input');
    return {
      id: `i${randomBytes(6).toString('hex')}`,
      nodes: nodes.map((devname) => {
        const listed = listedDevices[listedNodes.indexOf(devname)];
        const record = records.find((r) => r.devpath.endsWith(`/${devname}`));
        const now = record ? `${record.properties.MAJOR}:${record.properties.MINOR}` : undefined;
        if (!/^event\d{1,4}$/.test(devname) || listed === undefined || now !== listed) {
          throw Errors.deviceChanged({
            device: label,
            reason: `${devname} is ${now ?? 'gone'} now, listed as ${listed ?? 'nothing'}`,
          });
        }
        return { devname, majorMinor: listed };
      }),
    };
  }

  /** Live exports (for tests and `devgate usbvm` listings). */
  liveExports(): readonly { readonly id: string; readonly port: string; readonly device: string }[] {
    return [...this.exports.values()];
  }

  private freePort(): { name: string; path: string } | undefined {
    const offered = new Set(this.hello?.ports ?? []);
    for (const [name, path] of Object.entries(this.options.exportPorts ?? {})) {
      if (offered.has(name) && !this.busyPorts.has(name)) return { name, path };
    }
    return undefined;
  }

  /**
   * A port whose frontend left while the agent was writing to it keeps those bytes in the guest
   * until the next connection: connect once, take them, and only then offer the port again.
   */
  private async drain(port: string): Promise<void> {
    const path = this.options.exportPorts?.[port];
    if (!path) return;
    const session = this.socket;
    this.busyPorts.add(port);
    await new Promise<void>((resolve) => {
      const socket = net.connect(path);
      const done = () => {
        clearTimeout(timer);
        socket.destroy();
        resolve();
      };
      const timer = setTimeout(done, 1_000);
      socket.on('data', () => {
        clearTimeout(timer);
        // Whatever was pending arrives in one go; give the rest a moment.
        setTimeout(done, 100);
      });
      socket.on('error', done);
      socket.on('close', done);
    });
    // A later session's ports are its hello's business.
    if (this.state === 'ready' && this.socket === session) this.busyPorts.delete(port);
  }

  dispose(): void {
    this.close('devgate stopped listening to it');
    this.state = 'disposed';
    this.tree.complete();
    this.incidents.complete();
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
