/**
 * Test harness for devgated: a temp directory per daemon, the daemon in-process or as a child
 * process (a real process to SIGKILL), and small HTTP-over-Unix-socket clients: one through
 * node:http for well-formed requests, one over raw sockets for bytes node:http refuses to send.
 *
 * Also: lab VMs (`startLab`), what QEMU and devgated each say is attached, a seeded PRNG.
 *
 * Everything a test starts here is tracked and torn down by `cleanupHarness()` (call it in
 * afterAll; it runs whether or not the test failed): daemons (in-process, and child processes with
 * their process groups), then lab VMs, then this process's loop disks, then temp directories.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { type DeviceJson } from '@devgate/core';
import { QemuConnector, isQemuAlive, labDown, labUp } from '@devgate/backend-qemu';
import { disposeAllLoopDisks, materializeHost } from '@devgate/testkit';
import { type DaemonConfig } from '@devgate/service';
import { Devgated, rwSocketPath } from '../devgated.js';

/** apps/daemon/src */
export const DAEMON_SRC = path.resolve(__dirname, '..');
const RUNNER = path.join(__dirname, 'run-devgated.cjs');

const tempDirs = new Set<string>();
const inProcess = new Set<Devgated>();
const children = new Set<DaemonProcess>();
const labs = new Set<Lab>();

// -- temp directories and configuration

/**
 * A fresh directory under the system temp dir, removed by `cleanupHarness()`. `mode` 0o755 makes it
 * traversable by other users (mkdtemp creates 0700), for tests that connect as another uid.
 */
export function makeTempDir(prefix = 'devgated-', mode?: number): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  if (mode !== undefined) fs.chmodSync(dir, mode);
  tempDirs.add(dir);
  return dir;
}

/**
 * A configuration whose every path is inside `dir`: sockets in `dir/run`, state in `dir/state`,
 * the domain registry `dir/domains.json` (absent until a lab VM is started), and by default one
 * backend, dom0, that is an empty host tree (`dir/host`), so nothing on the real machine shows.
 */
export function harnessConfig(dir: string, overrides: Partial<DaemonConfig> = {}): DaemonConfig {
  const config: DaemonConfig = {
    socket: path.join(dir, 'run', 'devgate.sock'),
    stateDir: path.join(dir, 'state'),
    domains: path.join(dir, 'domains.json'),
    backends: { dom0: { sysroot: path.join(dir, 'host') } },
    access: { users: [], groups: [] },
    askTimeoutSeconds: 60,
    ...overrides,
  };
  for (const spec of Object.values(config.backends)) {
    if ('sysroot' in spec && !fs.existsSync(spec.sysroot)) materializeHost([], spec.sysroot);
  }
  return config;
}

/** Writes `config` as a devgated configuration file (what `--config FILE` reads). */
export function writeConfigFile(config: DaemonConfig, file: string): string {
  const json = {
    socket: config.socket,
    stateDir: config.stateDir,
    ...(config.domains ? { domains: config.domains } : {}),
    backends: config.backends,
    access: {
      ...(config.access.readGroup ? { readGroup: config.access.readGroup } : {}),
      users: config.access.users,
      groups: config.access.groups,
    },
    askTimeoutSeconds: config.askTimeoutSeconds,
    // When set, exactly these URIs (without, devgated adds libvirt's default one, qemu:///system).
    ...(config.libvirt ? { libvirt: { defaultUri: false, uris: config.libvirt.uris } } : {}),
    // Driver packages, as written: names and relative paths resolve from the file's directory.
    ...(config.modules ? { modules: config.modules.map((m) => m.specifier) } : {}),
  };
  fs.writeFileSync(file, JSON.stringify(json, null, 2) + '\n');
  return file;
}

/**
 * Names `vms` in the configuration's domain registry: they exist for devgated (which refuses an
 * attach or an assignment to a VM it does not know) without a QEMU behind their QMP sockets.
 */
export function registerVms(config: DaemonConfig, vms: readonly string[]): void {
  const file = config.domains!;
  const domains = Object.fromEntries(vms.map((vm) => [vm, { qmp: path.join(path.dirname(file), `${vm}.qmp`) }]));
  fs.writeFileSync(file, JSON.stringify({ domains }, null, 2) + '\n');
}

// -- devgated in-process

/** `Devgated.start` with a silent logger; stopped by `cleanupHarness()` if the test does not. */
export async function startInProcess(config: DaemonConfig): Promise<Devgated> {
  const daemon = await Devgated.start(config, pino({ level: 'silent' }));
  inProcess.add(daemon);
  const stop = daemon.stop.bind(daemon);
  // Stopping twice (the test, then cleanup) must be harmless.
  let stopping: Promise<void> | undefined;
  daemon.stop = () => {
    inProcess.delete(daemon);
    stopping ??= stop();
    return stopping;
  };
  return daemon;
}

/** The child's environment: ours, minus what would override its configuration file. */
function daemonEnv(logLevel: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, DEVGATE_LOG_LEVEL: logLevel };
  delete env.DEVGATE_SOCKET;
  return env;
}

// -- devgated as a child process

/**
 * What `DaemonProcess.standby` runs (`node -e`, cwd DAEMON_SRC): run-devgated.cjs, except that main
 * runs only once a line arrives on stdin. Stdin closing first (the test died) ends the standby.
 */
const STANDBY_SCRIPT = `
'use strict';
require('@devgate/service/testing/register-ts.cjs');
const { main } = require('./main.ts');
// fastify loads most of itself (its schema compilers among them) when the first instance is built
// and made ready: do that here too, on a throwaway instance that never listens.
const warm = require('fastify')({ logger: false });
warm.get('/', { schema: { querystring: { type: 'object', properties: { a: { type: 'string' } } } } }, async () => ({}));
void warm.ready().then(() => warm.close());
let started = false;
// Ends with the test: when stdin closes, or (should stdin stay open) when the test process is gone.
const parent = process.ppid;
const orphaned = setInterval(() => process.ppid !== parent && process.exit(0), 250);
process.stdin.once('data', () => {
  started = true;
  clearInterval(orphaned);
  process.stdin.destroy();
  main(process.argv.slice(1)).then(
    (code) => { process.exitCode = code; },
    (error) => {
      process.stderr.write('devgated standby: ' + (error && error.stack ? error.stack : String(error)) + '\\n');
      process.exitCode = 1;
    },
  );
});
process.stdin.once('end', () => { if (!started) process.exit(0); });
`;

/** A devgated child process that has loaded its code and waits (see `DaemonProcess.standby`). */
export interface DaemonStandby {
  /** The process, already running (not yet devgated): kill() or stop() it to discard the standby. */
  readonly daemon: DaemonProcess;
  /** Starts devgated in it and waits until it answers on both sockets. */
  activate(): Promise<DaemonProcess>;
}

export interface DaemonExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface SpawnOptions {
  /** How long until both sockets answer GET /v1/health. Default 20 s. */
  readonly readyTimeoutMs?: number;
  /** devgated's log level (pino); default `warn`. */
  readonly logLevel?: string;
}

/**
 * devgated running `src/main.ts --config FILE` from the TypeScript sources in its own process group
 * (so a SIGKILL also reaches what it spawned, such as `udevadm monitor`).
 */
export class DaemonProcess {
  readonly exited: Promise<DaemonExit>;
  private output = '';
  private exit?: DaemonExit;

  private constructor(
    readonly config: DaemonConfig,
    private readonly child: ChildProcess,
  ) {
    const keep = (chunk: Buffer) => (this.output = (this.output + chunk.toString()).slice(-32_768));
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        children.delete(this);
        resolve(this.exit);
      });
    });
  }

  /** Starts devgated with `config` (written to `<stateDir>/../devgated.json`) and waits until it answers. */
  static async start(config: DaemonConfig, options: SpawnOptions = {}): Promise<DaemonProcess> {
    const configFile = writeConfigFile(config, path.join(path.dirname(config.stateDir), 'devgated.json'));
    const child = spawn(process.execPath, ['--conditions=@devgate/source', RUNNER, '--config', configFile], {
      cwd: DAEMON_SRC,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: daemonEnv(options.logLevel ?? 'warn'),
    });
    const daemon = new DaemonProcess(config, child);
    children.add(daemon);
    try {
      await daemon.waitUntilReady(options.readyTimeoutMs ?? 20_000);
    } catch (error) {
      await daemon.kill();
      throw error;
    }
    return daemon;
  }

  /**
   * devgated as `start` runs it, but only loaded: the child process has required devgated's code
   * (what costs most of a cold start, ~0.5-1 s) and waits; `activate()` runs main with `config` and
   * waits until it answers. For tests that restart devgated hundreds of times: the next process
   * loads while the current one serves, so a restart costs only what devgated does when it starts
   * (opening the state, reading back the hypervisors, reconciling the journal, listening).
   * Nothing is opened before `activate()`. Tracked and torn down like `start`'s processes.
   */
  static standby(config: DaemonConfig, options: SpawnOptions = {}): DaemonStandby {
    const configFile = writeConfigFile(config, path.join(path.dirname(config.stateDir), 'devgated.json'));
    const child = spawn(
      process.execPath,
      ['--conditions=@devgate/source', '-e', STANDBY_SCRIPT, '--', '--config', configFile],
      { cwd: DAEMON_SRC, detached: true, stdio: ['pipe', 'pipe', 'pipe'], env: daemonEnv(options.logLevel ?? 'warn') },
    );
    const daemon = new DaemonProcess(config, child);
    children.add(daemon);
    child.stdin!.on('error', () => undefined); // a standby killed before activate()
    let activated: Promise<DaemonProcess> | undefined;
    return {
      daemon,
      activate: () =>
        (activated ??= (async () => {
          child.stdin!.end('start\n');
          try {
            await daemon.waitUntilReady(options.readyTimeoutMs ?? 20_000);
          } catch (error) {
            await daemon.kill();
            throw error;
          }
          return daemon;
        })()),
    };
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  /** The last 32 KiB of its stdout and stderr, for failure messages. */
  log(): string {
    return this.output;
  }

  /** Resident memory in KiB, from /proc (undefined once it has exited). */
  rssKiB(): number | undefined {
    try {
      const match = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${this.pid}/status`, 'utf8'));
      return match ? Number(match[1]) : undefined;
    } catch {
      return undefined;
    }
  }

  /** How many file descriptors it has open (sockets included), from /proc. */
  openFds(): number | undefined {
    try {
      return fs.readdirSync(`/proc/${this.pid}/fd`).length;
    } catch {
      return undefined;
    }
  }

  /** SIGKILL to the whole process group; resolves once the daemon has exited. */
  async kill(): Promise<DaemonExit> {
    this.signalGroup('SIGKILL');
    const exit = await this.exited;
    this.signalGroup('SIGKILL'); // anything it spawned that outlived it
    return exit;
  }

  /** SIGTERM (a clean stop), SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 10_000): Promise<DaemonExit> {
    if (!this.running) return this.exit!;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.signalGroup('SIGKILL'), timeoutMs);
    const exit = await this.exited;
    clearTimeout(timer);
    this.signalGroup('SIGKILL');
    return exit;
  }

  private signalGroup(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch {
      // the group is gone
    }
  }

  private async waitUntilReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const socket of [this.config.socket, rwSocketPath(this.config.socket)]) {
      for (;;) {
        if (!this.running) {
          throw new Error(`devgated exited (${JSON.stringify(this.exit)}) before it answered:\n${this.output}`);
        }
        const health = await request(socket, 'GET', '/v1/health', undefined, { timeoutMs: 2_000 }).catch(
          () => undefined,
        );
        if (health?.status === 200) break;
        if (Date.now() > deadline) {
          throw new Error(`devgated did not answer on ${socket} within ${timeoutMs} ms:\n${this.output}`);
        }
        await sleep(25);
      }
    }
  }
}

// -- clients

export interface ApiResponse<T = unknown> {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly text: string;
  /** The parsed JSON body, or undefined when it was not JSON. */
  readonly body: T;
}

export interface RequestOptions {
  readonly headers?: http.OutgoingHttpHeaders;
  /** Sent as is instead of JSON.stringify(body). */
  readonly rawBody?: string | Buffer;
  /** Default 30 s. */
  readonly timeoutMs?: number;
}

/** One request over a new connection (no keep-alive, so a restarted daemon is never talked to through a dead socket). */
export function request<T = unknown>(
  socketPath: string,
  method: string,
  route: string,
  body?: unknown,
  options: RequestOptions = {},
): Promise<ApiResponse<T>> {
  const payload = options.rawBody ?? (body === undefined ? undefined : JSON.stringify(body));
  const headers: http.OutgoingHttpHeaders = {
    ...(payload !== undefined && options.rawBody === undefined ? { 'content-type': 'application/json' } : {}),
    ...options.headers,
  };
  const timeoutMs = options.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method, path: route, headers, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', reject);
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        resolve({ status: response.statusCode!, headers: response.headers, text, body: parsed as T });
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${route}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

/** GETs go to the read-only socket, everything else to `<socket>.rw`, as the CLI does. */
export class ApiClient {
  constructor(readonly socket: string) {}

  get rwSocket(): string {
    return rwSocketPath(this.socket);
  }

  get<T = unknown>(route: string, options?: RequestOptions): Promise<ApiResponse<T>> {
    return request<T>(this.socket, 'GET', route, undefined, options);
  }

  post<T = unknown>(route: string, body: unknown, options?: RequestOptions): Promise<ApiResponse<T>> {
    return request<T>(this.rwSocket, 'POST', route, body, options);
  }

  /** GET on the rw socket (it serves every route). */
  getRw<T = unknown>(route: string, options?: RequestOptions): Promise<ApiResponse<T>> {
    return request<T>(this.rwSocket, 'GET', route, undefined, options);
  }
}

export interface RawExchange {
  /** Everything the server sent before it closed or we gave up. */
  readonly received: Buffer;
  /** `closed`: the server ended the connection; `timeout`: we destroyed it; `error`: a socket error. */
  readonly outcome: 'closed' | 'timeout' | 'error';
  readonly error?: string;
}

export interface RawOptions {
  /** Give up (destroy the connection) after this long. */
  readonly timeoutMs: number;
  /** End our side after writing (a half-closed connection). Default true. */
  readonly halfClose?: boolean;
  /** Destroy the connection this long after writing, without waiting for an answer. */
  readonly abandonAfterMs?: number;
}

/** Writes raw bytes to a Unix socket and collects what comes back until the server closes. */
export function rawExchange(socketPath: string, chunks: readonly Buffer[], options: RawOptions): Promise<RawExchange> {
  return new Promise((resolve) => {
    const received: Buffer[] = [];
    let settled = false;
    const socket = net.connect({ path: socketPath });
    const finish = (outcome: RawExchange['outcome'], error?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ received: Buffer.concat(received), outcome, ...(error ? { error: error.message } : {}) });
    };
    const timer = setTimeout(() => finish('timeout'), options.timeoutMs);
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    socket.on('end', () => finish('closed'));
    socket.on('close', () => finish('closed'));
    socket.on('error', (error) => finish('error', error));
    socket.on('connect', () => {
      for (const chunk of chunks) socket.write(chunk);
      if (options.abandonAfterMs !== undefined) setTimeout(() => finish('timeout'), options.abandonAfterMs);
      else if (options.halfClose ?? true) socket.end();
    });
  });
}

export interface RawResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
}

/**
 * The HTTP/1.1 responses in `bytes`, in order (several when requests were pipelined); interim 1xx
 * responses (100 Continue) are skipped. Bodies are delimited by content-length or chunked encoding;
 * a response without either runs to the end; answers to HEAD have none. Throws on bytes that are
 * not HTTP responses.
 */
export function parseResponses(bytes: Buffer, options: { head?: boolean } = {}): RawResponse[] {
  const responses: RawResponse[] = [];
  let at = 0;
  while (at < bytes.length) {
    const headEnd = bytes.indexOf('\r\n\r\n', at);
    if (headEnd < 0)
      throw new Error(`incomplete response head: ${JSON.stringify(bytes.subarray(at, at + 200).toString())}`);
    const [statusLine, ...headerLines] = bytes.subarray(at, headEnd).toString('latin1').split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(statusLine);
    if (!status) throw new Error(`not an HTTP status line: ${JSON.stringify(statusLine)}`);
    const headers: Record<string, string> = {};
    for (const line of headerLines) {
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    at = headEnd + 4;
    const code = Number(status[1]);
    if (code >= 100 && code < 200) continue;
    let body: Buffer;
    if (options.head) {
      body = Buffer.alloc(0);
    } else if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
      const parts: Buffer[] = [];
      for (;;) {
        const lineEnd = bytes.indexOf('\r\n', at);
        if (lineEnd < 0) throw new Error('truncated chunked body');
        const size = Number.parseInt(bytes.subarray(at, lineEnd).toString('latin1'), 16);
        at = lineEnd + 2;
        if (!(size >= 0)) throw new Error('bad chunk size');
        if (size === 0) {
          at = bytes.indexOf('\r\n', at) + 2; // trailers, if any, are not expected
          break;
        }
        parts.push(bytes.subarray(at, at + size));
        at += size + 2;
      }
      body = Buffer.concat(parts);
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      body = bytes.subarray(at, at + length);
      if (body.length < length) throw new Error(`truncated body: ${body.length} of ${length} bytes`);
      at += length;
    } else {
      body = bytes.subarray(at);
      at = bytes.length;
    }
    responses.push({ status: code, headers, body });
  }
  return responses;
}

// -- lab VMs

/** Paused QEMU VMs (no guest OS) registered in `<dir>/domains.json`, stopped by `cleanupHarness()`. */
export interface Lab {
  readonly registryFile: string;
  readonly vms: readonly string[];
  stop(): Promise<void>;
}

export async function startLab(dir: string, vms: readonly string[]): Promise<Lab> {
  const registryFile = path.join(dir, 'domains.json');
  const started = await labUp(vms, { registryFile, stateDir: path.join(dir, 'lab') });
  const lab: Lab = {
    registryFile,
    vms,
    stop: async () => {
      labs.delete(lab);
      await labDown(undefined, { registryFile }).catch(() => undefined);
      // Whatever labDown could not stop (a registry already gone): by pid, if it is still our QEMU.
      for (const vm of started) if (isQemuAlive(vm.pid, vm.socket)) process.kill(vm.pid, 'SIGKILL');
    },
  };
  labs.add(lab);
  return lab;
}

// -- what is attached, as devgated and as QEMU see it

/** One block attachment: the VM and the host device file it has. */
export interface Attached {
  readonly frontend: string;
  readonly file: string;
}

function sortAttached(list: Attached[]): Attached[] {
  return list.sort((a, b) => `${a.frontend} ${a.file}`.localeCompare(`${b.frontend} ${b.file}`));
}

/** devgate's block nodes (`dg-…`) in each VM, through a connector that holds the QMP connections. */
export async function qemuAttachmentsVia(
  connector: Pick<QemuConnector, 'queryBlock'>,
  vms: readonly string[],
): Promise<Attached[]> {
  const found: Attached[] = [];
  for (const vm of vms) {
    for (const block of await connector.queryBlock(vm)) {
      if (block.inserted?.['node-name']?.startsWith('dg-')) found.push({ frontend: vm, file: block.inserted.file });
    }
  }
  return sortAttached(found);
}

/**
 * What QEMU itself says is attached, over fresh QMP connections. QEMU serves one QMP client at a
 * time: call this only while no devgated runs (it closes its connections when done).
 */
export async function qemuAttachments(registryFile: string, vms: readonly string[]): Promise<Attached[]> {
  return (await qemuBlockState(registryFile, vms)).attached;
}

/**
 * As qemuAttachments, plus devgate's block nodes that no device uses (`vm:dg-…`): what a devgated
 * killed between `blockdev-add` and `device_add` (or `device_del` and `blockdev-del`) leaves behind.
 */
export async function qemuBlockState(
  registryFile: string,
  vms: readonly string[],
): Promise<{ attached: Attached[]; orphans: string[] }> {
  const connector = new QemuConnector({ registryFile, handshakeTimeoutMs: 5_000 });
  try {
    const attached = await qemuAttachmentsVia(connector, vms);
    const orphans: string[] = [];
    for (const vm of vms) {
      const inUse = new Set(
        (await connector.queryBlock(vm)).map((b) => b.inserted?.['node-name']).filter((n) => n !== undefined),
      );
      const nodes = await connector.execute<{ 'node-name': string }[]>(vm, 'query-named-block-nodes', { flat: true });
      for (const node of nodes) {
        const name = node['node-name'];
        if (name.startsWith('dg-') && !inUse.has(name)) orphans.push(`${vm}:${name}`);
      }
    }
    return { attached, orphans: [...new Set(orphans)] };
  } finally {
    connector.dispose();
  }
}

/**
 * As qemuBlockState, once QEMU has finished the unplugs under way. `device_del` of a USB stick returns
 * with the device gone, but its block backend stays listed in `query-block`, without a `qdev`, until
 * QEMU has finalized the device (some 50 ms later): a devgated killed just after a `device_del` leaves
 * QEMU in that state for a moment. Waits (polling, as `until`) until no devgate block node is listed
 * without its device, then reads the state. Only while no devgated runs, as qemuBlockState.
 */
export async function qemuSettledBlockState(
  registryFile: string,
  vms: readonly string[],
  timeoutMs = 5_000,
): Promise<{ attached: Attached[]; orphans: string[] }> {
  const connector = new QemuConnector({ registryFile, handshakeTimeoutMs: 5_000 });
  try {
    await until(
      'QEMU to finish the unplugs under way',
      async () => {
        for (const vm of vms) {
          for (const block of await connector.queryBlock(vm)) {
            if (block.inserted?.['node-name']?.startsWith('dg-') && !block.qdev) return false;
          }
        }
        return true;
      },
      timeoutMs,
    );
  } finally {
    connector.dispose();
  }
  return qemuBlockState(registryFile, vms);
}

/**
 * What devgated says is attached (block devices of dom0 map to `<devDir>/<portId>`: `/dev` for the
 * local source, `<sysroot>/dev` for a host tree, whose own device nodes are what QEMU opens).
 */
export async function daemonAttachments(client: ApiClient, devDir = '/dev'): Promise<Attached[]> {
  const { status, body } = await client.get<{ devices: DeviceJson[] }>('/v1/devices?all=true');
  if (status !== 200) throw new Error(`GET /v1/devices: ${status}`);
  return sortAttached(
    body.devices
      .filter((d) => d.class === 'block' && d.attachment)
      .map((d) => ({ frontend: d.attachment!.frontend, file: path.join(devDir, d.portId) })),
  );
}

// -- small utilities

/** A small seeded PRNG (mulberry32): put the seed in failure messages to replay a run. */
export function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` every 20 ms until it holds, failing after `timeoutMs`. */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Runs `worker` over `items` with at most `limit` in flight, in order of start. */
export async function inParallel<T, R>(
  items: readonly T[],
  limit: number,
  worker: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await worker(items[index], index);
    }
  });
  await Promise.all(lanes);
  return results;
}

/**
 * Stops every daemon still running (for afterEach: a test that failed half-way must not leave one
 * holding the VMs' QMP sockets, which serve one client at a time).
 */
export async function stopDaemons(): Promise<void> {
  await Promise.all([...children].map((d) => d.stop(5_000).catch(() => undefined)));
  for (const daemon of [...inProcess]) await daemon.stop().catch(() => undefined);
}

/**
 * Stops everything the harness started, in order: daemons, then lab VMs, then this process's loop
 * disks (QEMU may hold them open), then removes the temp directories. For afterAll.
 */
export async function cleanupHarness(): Promise<void> {
  await stopDaemons();
  for (const lab of [...labs]) await lab.stop();
  disposeAllLoopDisks();
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}
