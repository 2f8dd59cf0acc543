/**
 * devgate-agent: runs inside a backend VM (sys-usb). It reads the VM's devices with the same host
 * source devgated uses for its own host (sysfs, udev data, kernel uevents), sends them to devgated as
 * raw records (protocol: @devgate/backend-agent, docs/agent-protocol.md), applies USB authorization
 * inside the VM when given USBGuard rules, and exports devices on devgated's request.
 *
 * It trusts devgated (the host), but still bounds what it reads from the channel. Exports outlive
 * the control connection: devgated may restart while a frontend keeps reading a stick.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Subscription } from 'rxjs';
import { type HostTree, type RawDeviceRecord, findExecutable } from '@devgate/core';
import { type HostRoots, LOCAL_ROOTS, LocalHostSource } from '@devgate/host';
import {
  EXPORT_ID,
  FORWARD_ID,
  EXPORT_PORT_PREFIX,
  type ExportKind,
  type ExportSpec,
  type InputForwardSpec,
  LineReader,
  PROTOCOL_VERSION,
  type WireRecord,
  treeMessageOf,
  wireRecordOf,
} from '@devgate/backend-agent';
import { UsbAuthorizer, type UsbPolicy, parseRulesFile } from '@devgate/driver-usb';
import { type ControlSession, type ControlTransport } from './control-channel.js';
import { ExportError, LiveExport } from './exports.js';
import { InputForward } from './input-forward.js';
import { findVirtioPort, listVirtioPorts } from './virtio-port.js';

export const AGENT_VERSION = '0.1.0';

export interface AgentOptions {
  readonly transport: ControlTransport;
  readonly roots?: HostRoots;
  /** Sockets and pid files of exports. Default `/run/devgate-agent`. */
  readonly runDir?: string;
  readonly qemuNbd?: string;
  readonly usbredirect?: string;
  /** USBGuard rules applied to this VM's USB devices (`allow`/`block`/`reject`, as devgated's usbPolicy). */
  readonly usbPolicy?: { readonly rules: string; readonly implicitTarget: 'allow' | 'block' | 'reject' };
  /** Trees are sent at most this often (coalesced). Default 25 ms. */
  readonly treeIntervalMs?: number;
  /** Where virtio-serial ports are listed (tests). */
  readonly portsDir?: string;
  readonly log?: (message: string) => void;
}

/** How long an export whose device vanished waits for its frontend to let go before it is cut. */
const DEVICE_GONE_GRACE_MS = 30_000;

/** Requests are small; a longer line from the host is dropped with its session. */
const MAX_REQUEST_BYTES = 64 * 1024;

export class DevgateAgent {
  private readonly source: LocalHostSource;
  private readonly log: (message: string) => void;
  private readonly exports = new Map<string, LiveExport>();
  private readonly forwards = new Map<string, InputForward>();
  private session?: ControlSession;
  private tree?: HostTree;
  private seq = 0;
  private sendTimer?: NodeJS.Timeout;
  private lastSent = 0;
  private subscription?: Subscription;
  private authorizer?: UsbAuthorizer;
  private readonly runDir: string;
  private readonly wireCache = new WeakMap<RawDeviceRecord, WireRecord>();

  constructor(private readonly options: AgentOptions) {
    this.log = options.log ?? ((message) => process.stderr.write(`devgate-agent: ${message}\n`));
    this.runDir = options.runDir ?? '/run/devgate-agent';
    this.source = new LocalHostSource({ backend: 'self', roots: options.roots ?? LOCAL_ROOTS });
  }

  start(): this {
    fs.mkdirSync(this.runDir, { recursive: true, mode: 0o700 });
    this.subscription = this.source.trees$.subscribe({
      next: (tree) => this.onTree(tree),
      error: (error: unknown) => this.log(`reading devices failed: ${(error as Error).message}`),
    });
    if (this.options.usbPolicy) {
      const { rules, implicitTarget } = this.options.usbPolicy;
      const policy: UsbPolicy = { rules: parseRulesFile(fs.readFileSync(rules, 'utf8'), rules), implicitTarget };
      this.authorizer = new UsbAuthorizer(this.source, policy, { sysRoot: (this.options.roots ?? LOCAL_ROOTS).sys });
      this.authorizer.decisions$.subscribe((d) => this.log(`usb ${d.device}: ${d.target} (${d.reason})`));
      this.authorizer.start();
    }
    this.options.transport.start((session) => this.onSession(session));
    this.log(`serving devgated on ${this.options.transport.description} (hotplug: ${this.source.hotplug})`);
    return this;
  }

  // -- devgated's connections

  private onSession(session: ControlSession): void {
    this.session = session;
    const reader = new LineReader(MAX_REQUEST_BYTES);
    // A newline first: it ends whatever an earlier session's write left half-sent on the port.
    session.write('\n' + JSON.stringify(this.hello()) + '\n');
    if (this.tree) this.sendTree();
    session.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = reader.push(chunk);
      } catch {
        this.log('a request line too long: dropping the connection');
        return session.close('request too long');
      }
      for (const line of lines) this.onLine(session, line);
    });
    session.on('close', (reason: string) => {
      if (this.session === session) this.session = undefined;
      // Input goes to devgated only: with it gone, there is nobody to decide where it goes.
      for (const forward of [...this.forwards.values()]) forward.end('devgated disconnected');
      this.log(`devgated disconnected (${reason}); ${this.exports.size} export(s) go on`);
    });
  }

  private hello() {
    const exports: ExportKind[] = [];
    if (findExecutable(this.options.qemuNbd ?? 'qemu-nbd')) exports.push('nbd');
    if (findExecutable(this.options.usbredirect ?? 'usbredirect')) exports.push('usbredir');
    if (findExecutable('cat')) exports.push('input');
    const ports = listVirtioPorts(this.options.portsDir)
      .map((p) => p.name)
      .filter((name) => name.startsWith(EXPORT_PORT_PREFIX))
      .sort();
    const busy = [...this.exports.values()].map((e) => e.spec.port);
    return {
      v: PROTOCOL_VERSION,
      type: 'hello',
      agent: 'devgate-agent ' + AGENT_VERSION,
      exports,
      ports,
      ...(busy.length ? { busy } : {}),
    };
  }

  private send(session: ControlSession | undefined, message: object): void {
    session?.write(JSON.stringify(message) + '\n');
  }

  private onLine(session: ControlSession, line: string): void {
    let request: { v?: unknown; type?: unknown; id?: unknown; op?: unknown; export?: unknown; forward?: unknown };
    try {
      request = JSON.parse(line) as typeof request;
    } catch {
      return; // a newline on its own, or noise
    }
    if (!request || request.v !== 1 || request.type !== 'request' || !Number.isSafeInteger(request.id)) return;
    const id = request.id as number;
    const reply = (ok: boolean, error?: { code: string; message: string }) =>
      this.send(session, { v: PROTOCOL_VERSION, type: 'reply', id, ok, ...(error ? { error } : {}) });
    switch (request.op) {
      case 'ping':
        return reply(true);
      case 'hello':
        // devgated connected before this session saw the previous connection go: the hello again.
        this.send(session, this.hello());
        if (this.tree) this.sendTree();
        return reply(true);
      case 'export':
        return void this.export(request.export as ExportSpec).then(
          () => reply(true),
          (error: Error) =>
            reply(false, {
              code: (error as ExportError).code ?? 'EXPORT_FAILED',
              message: error.message.slice(0, 1000),
            }),
        );
      case 'unexport': {
        const live = typeof request.export === 'string' ? this.exports.get(request.export) : undefined;
        live?.end('withdrawn by devgated');
        return reply(true);
      }
      case 'input-forward':
        try {
          this.forward(session, request.forward as InputForwardSpec);
          return reply(true);
        } catch (error) {
          const { code, message } = error as ExportError;
          return reply(false, { code: code ?? 'FORWARD_FAILED', message: message.slice(0, 1000) });
        }
      case 'input-stop':
        if (typeof request.forward === 'string') this.forwards.get(request.forward)?.end('stopped by devgated');
        return reply(true);
      default:
        return reply(false, { code: 'UNKNOWN_OP', message: `unknown request ${String(request.op).slice(0, 40)}` });
    }
  }

  private async export(spec: ExportSpec): Promise<void> {
    if (!spec || typeof spec.id !== 'string' || !EXPORT_ID.test(spec.id))
      throw new ExportError('BAD_REQUEST', 'no export id');
    if (this.exports.has(spec.id)) throw new ExportError('BAD_REQUEST', `export ${spec.id} exists`);
    if ([...this.exports.values()].some((e) => e.spec.port === spec.port)) {
      throw new ExportError('PORT_BUSY', `${spec.port} serves another export`);
    }
    const live = new LiveExport(spec, {
      runDir: this.runDir,
      sysRoot: (this.options.roots ?? LOCAL_ROOTS).sys,
      devRoot: (this.options.roots ?? LOCAL_ROOTS).dev,
      procRoot: (this.options.roots ?? LOCAL_ROOTS).proc,
      qemuNbd: this.options.qemuNbd ?? 'qemu-nbd',
      usbredirect: this.options.usbredirect ?? 'usbredirect',
      portDevice: (name) => findVirtioPort(name, this.options.portsDir),
      log: this.log,
    });
    this.exports.set(spec.id, live);
    live.once('ended', (reason: string, clean: boolean) => {
      this.exports.delete(spec.id);
      this.send(this.session, { v: PROTOCOL_VERSION, type: 'export-ended', export: spec.id, reason, clean });
    });
    try {
      await live.start();
    } catch (error) {
      this.exports.delete(spec.id);
      live.removeAllListeners('ended');
      throw error;
    }
    this.log(`export ${spec.id}: ${describe(spec)} armed on ${spec.port}`);
  }

  private forward(session: ControlSession, spec: InputForwardSpec): void {
    if (!spec || typeof spec.id !== 'string' || !FORWARD_ID.test(spec.id) || !Array.isArray(spec.nodes)) {
      throw new ExportError('BAD_REQUEST', 'not a forward');
    }
    if (this.forwards.has(spec.id)) throw new ExportError('BAD_REQUEST', `forward ${spec.id} exists`);
    const forward = new InputForward(spec, {
      inputDir: path.join((this.options.roots ?? LOCAL_ROOTS).dev, 'input'),
      send: (events) => this.send(session, { v: PROTOCOL_VERSION, type: 'input', forward: spec.id, events }),
    });
    forward.start();
    this.forwards.set(spec.id, forward);
    forward.once('ended', (reason: string) => {
      this.forwards.delete(spec.id);
      this.log(`input ${spec.id} ended: ${reason}`);
      if (this.session !== session) return;
      this.send(session, { v: PROTOCOL_VERSION, type: 'input-ended', forward: spec.id, reason: reason.slice(0, 256) });
    });
    this.log(`input ${spec.id}: ${spec.nodes.map((n) => n.devname).join(',')} forwarded to devgated`);
  }

  // -- devices

  private onTree(tree: HostTree): void {
    this.tree = tree;
    // An export whose device is gone is not cut at once: its server answers what the frontend has in
    // flight with errors (a read of a vanished disk fails), so the frontend's QEMU can let go of it
    // when devgated detaches it (a moment later); cut now, QEMU would wait for those answers forever.
    // It ends when the frontend leaves, or after a grace period.
    for (const live of [...this.exports.values()]) {
      if (!stillThere(tree, live.spec)) live.deviceGone(DEVICE_GONE_GRACE_MS);
    }
    this.scheduleTree();
  }

  private scheduleTree(): void {
    if (this.sendTimer) return;
    const interval = this.options.treeIntervalMs ?? 25;
    const wait = Math.max(0, this.lastSent + interval - Date.now());
    this.sendTimer = setTimeout(() => {
      this.sendTimer = undefined;
      this.sendTree();
    }, wait);
  }

  private sendTree(): void {
    if (!this.tree || !this.session) return;
    this.lastSent = Date.now();
    this.send(
      this.session,
      treeMessageOf(this.tree, ++this.seq, (record) => this.wire(record)),
    );
  }

  /**
   * A record's wire form, made once per record object: the host source hands out the same object
   * until the device changes, so a hotplug costs the new devices' reads only. Attributes are read
   * for the files the device directory has (one readdir), not tried one by one: under TCG a failed
   * open costs as much as a read.
   */
  private wire(record: RawDeviceRecord): WireRecord {
    let wire = this.wireCache.get(record);
    if (!wire) {
      const sys = (this.options.roots ?? LOCAL_ROOTS).sys;
      let present: Set<string> | undefined;
      wire = wireRecordOf(record, (r, name) => {
        present ??= new Set(listDir(path.join(sys, r.devpath)));
        return present.has(name.split('/')[0]) ? r.attribute(name) : undefined;
      });
      this.wireCache.set(record, wire);
    }
    return wire;
  }

  dispose(): void {
    clearTimeout(this.sendTimer);
    this.subscription?.unsubscribe();
    this.authorizer?.dispose();
    for (const live of [...this.exports.values()]) live.end('the agent stops');
    for (const forward of [...this.forwards.values()]) forward.end('the agent stops');
    this.options.transport.dispose();
    this.source.dispose();
  }
}

function stillThere(tree: HostTree, spec: ExportSpec): boolean {
  const name = spec.kind === 'nbd' ? spec.devname : spec.busid;
  const record = tree
    .devices(spec.kind === 'nbd' ? 'block' : 'usb')
    .find((r: RawDeviceRecord) => r.devpath.endsWith(`/${name}`));
  if (!record) return false;
  if (spec.kind === 'nbd') return `${record.properties.MAJOR}:${record.properties.MINOR}` === spec.majorMinor;
  const [vendor, product] = (record.properties.PRODUCT ?? '').split('/').map((hex) => hex.padStart(4, '0'));
  return `${vendor}:${product}` === `${spec.vendorId}:${spec.productId}`;
}

function describe(spec: ExportSpec): string {
  return spec.kind === 'nbd'
    ? `/dev/${spec.devname} over NBD${spec.readOnly ? ', read-only' : ''}`
    : `USB ${spec.busid} (${spec.vendorId}:${spec.productId}) over usbredir`;
}

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}
