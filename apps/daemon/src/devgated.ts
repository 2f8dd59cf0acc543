import * as fs from 'node:fs';
import * as path from 'node:path';
import { type FastifyInstance } from 'fastify';
import pino, { type Logger } from 'pino';
import {
  Errors,
  type DeviceInfo,
  type DeviceManager,
  type DeviceSource,
  type Disposable,
  Kernel,
  type Logger as PluginLogger,
  driverReport,
  errorCode,
  portLabel,
  type Port,
} from '@devgate/core';
import { LocalHostSource, RecordedHostSource, rootsUnder } from '@devgate/host';
import { UsbAuthorizer, parseRulesFile } from '@devgate/driver-usb';
import { InputProxy, InputReplug, forwardInput, inputProxyPolicy } from '@devgate/driver-input';
import { AgentSource } from '@devgate/backend-agent';
import {
  type AuditEntryInput,
  type DaemonConfig,
  DaemonEvents,
  DeviceService,
  type SqliteStateStore,
  builtinModules,
  denyListHook,
  loadConfiguredModules,
  logRefusedModules,
  openStateStore,
  provideServices,
} from '@devgate/service';
import { AskService } from './services/asks.js';
import { AutoAttach } from './services/auto-attach.js';
import { RegistryWatch } from './services/registry-watch.js';
import { buildApi } from './api/server.js';
import { READ_SOCKET_MODE, RW_SOCKET_MODE, applySocketAccess, listenOnNewSocket } from './access.js';
import { IdleCollector } from './idle-collect.js';

export const DAEMON_VERSION = '0.1.0';

/** The socket state-changing requests go to. */
export function rwSocketPath(socket: string): string {
  return `${socket}.rw`;
}

/**
 * devgated: one process owns the live device graph, the hypervisor connections (a QMP socket takes
 * one client) and the state, and serves the CLI, the tray and scripts.
 */
export class Devgated implements Disposable {
  private servers: FastifyInstance[] = [];
  /** The socket files this process created, and so removes when it stops. */
  private readonly createdSockets: string[] = [];
  private authorizer?: UsbAuthorizer;
  private stopped = false;
  private registry?: RegistryWatch;
  /** Qubes' input proxy: policy, asks and audit for input devices of backends other than dom0. */
  private inputProxy?: InputProxy;
  /** Input passthrough survives a replug: QEMU never reopens a node, so the same device is attached again. */
  private inputReplug?: InputReplug;
  /** A full collection once the start, or a list answer made, is over (ADR 0015: RSS). */
  private readonly idle = new IdleCollector();

  private constructor(
    readonly config: DaemonConfig,
    readonly kernel: Kernel,
    readonly manager: DeviceManager,
    readonly store: SqliteStateStore,
    readonly events: DaemonEvents,
    readonly asks: AskService,
    readonly devices: DeviceService,
    readonly autoAttach: AutoAttach,
    readonly log: Logger,
  ) {}

  static async start(config: DaemonConfig, log: Logger = pino({ level: 'info' })): Promise<Devgated> {
    const store = openStateStore(config.stateDir);
    const events = new DaemonEvents();
    // Every domain at the configured libvirt URIs is a frontend; a disk someone attached there maps to this host.
    const localBackend = Object.entries(config.backends).find(([, spec]) => 'source' in spec)?.[0] ?? 'dom0';
    const listing: { manager?: DeviceManager } = {};
    const isListed = (port: Port) => listing.manager?.get(port) !== undefined;
    const { modules, libvirt } = builtinModules({
      domains: config.domains,
      libvirt: { uris: config.libvirt?.uris ?? [], dom0: localBackend, isListed },
    });
    const kernel = new Kernel().load(...modules);
    // Third-party driver packages (the configuration's `modules`), each isolated, and what devgate provides them.
    const ownSysfs = Object.values(config.backends).find((spec) => 'sysroot' in spec);
    provideServices(kernel, {
      log: pinoLogger(log),
      roots: ownSysfs && 'sysroot' in ownSysfs ? rootsUnder(ownSysfs.sysroot) : undefined,
    });
    loadConfiguredModules(kernel, config.modules ?? [], log);
    for (const [backend, spec] of Object.entries(config.backends)) kernel.registerSource(sourceFor(backend, spec));
    kernel.registerPolicyHook(denyListHook(() => store));
    const manager = kernel.start();
    logRefusedModules(kernel, log);
    listing.manager = manager;
    const asks = new AskService(store, events, config.askTimeoutSeconds * 1000);
    const devices = new DeviceService(manager, store, events);
    const autoAttach = new AutoAttach(manager, store, asks, devices);
    const daemon = new Devgated(config, kernel, manager, store, events, asks, devices, autoAttach, log);
    try {
      // The registry's backend domains (recordings, devgate-agents) that the configuration does not
      // name, followed while devgated runs. Before anything is awaited: an agent's first words are
      // audited too.
      const agents = () => manager.sources.filter((s): s is AgentSource => s instanceof AgentSource);
      agents().forEach((agent) => daemon.watchAgent(agent));
      daemon.registry = new RegistryWatch(manager, {
        domains: config.domains,
        taken: (backend) => backend in config.backends,
        added: (source) => source instanceof AgentSource && daemon.watchAgent(source),
        warn: (fields, message) => log.warn(fields, message),
      });
      daemon.registry.start();
      // Their first trees are awaited (bounded) before what is attached is read back, so an
      // attachment that outlived a restart of devgated is not taken for a vanished device.
      await Promise.all(agents().map((agent) => agent.whenReady(5_000)));
      // libvirt's domains are read once before what is attached is reconciled; a URI out of reach now
      // is retried in the background, and its domains appear when it answers.
      for (const { uri, error } of await libvirt.ready()) {
        // Expected where no libvirtd runs: its reason, not a stack trace that reads like a crash.
        if (error)
          log.warn({ uri, code: errorCode(error), reason: error.message }, 'libvirt is not reachable (retried)');
      }
      // Watch first: what the read-back ends (a stick swapped while devgated was down) is audited.
      daemon.watch();
      await daemon.reconcile();
      daemon.authorizeUsb();
      autoAttach.start();
      const auditInput = (
        device: DeviceInfo,
        entry: Omit<AuditEntryInput, 'devclass' | 'backend' | 'portId' | 'deviceId'>,
      ) =>
        devices.audit({
          ...entry,
          devclass: 'input',
          backend: device.port.backend,
          portId: device.port.portId,
          deviceId: device.deviceId,
        });
      const inputTarget = (backend: string) => config.inputTargets?.[backend] ?? 'dom0';
      daemon.inputProxy = new InputProxy(manager, {
        rules: inputProxyPolicy(manager, (warning) => log.warn(warning), inputTarget),
        target: inputTarget,
        ask: (device, candidates, reason, description) => asks.ask(device, candidates, reason, description),
        remembered: (device, frontend) => store.answers.lookup(device, frontend)?.verdict,
        audit: ({ device, by, ...entry }) => auditInput(device, { ...entry, actor: by }),
        forward: forwardInput(manager, ({ device, ...entry }) =>
          auditInput(device, { ...entry, action: 'input-forward', actor: 'devgated (input proxy)' }),
        ),
      });
      daemon.inputProxy.start();
      daemon.inputReplug = new InputReplug(manager, {
        attach: (device, frontend, options) =>
          devices.attach(
            { devclass: 'input', frontend, device: portLabel(device.port), deviceId: device.deviceId, options },
            'devgated (input replug)',
            'reattach',
          ),
        detach: (device, frontend) =>
          devices.detach({ devclass: 'input', frontend, device: portLabel(device.port) }, 'devgated (input replug)'),
      });
      daemon.inputReplug.start();
      await daemon.listen();
      // The start read and diffed every device: its garbage is collected once it is quiet. Clients
      // that list right after a start (the tray, `devgate list`) make it wait for their answers.
      daemon.idle.after(2_000);
    } catch (error) {
      await daemon.stop();
      throw error;
    }
    log.info(
      { socket: config.socket, state: config.stateDir, sources: manager.sources.map((s) => s.id) },
      'devgated started',
    );
    return daemon;
  }

  /** A backend VM's agent: its connections, and what it does wrong (cut off: a broken protocol, a flood, a stall), audited. */
  private watchAgent(agent: AgentSource): void {
    agent.incidents$.subscribe((incident) => {
      if (incident.type === 'cut-off') {
        this.log.warn({ backend: incident.backend, code: incident.code, reason: incident.reason }, 'agent cut off');
        this.devices.audit({
          actor: 'devgated',
          action: 'agent',
          backend: incident.backend,
          outcome: 'denied',
          code: incident.code,
          reason: `the agent was cut off: ${incident.reason}; its devices are gone until it reconnects`,
        });
      } else if (incident.type === 'connected' || incident.type === 'disconnected') {
        this.log.info({ backend: incident.backend }, `agent ${incident.type}`);
        this.devices.audit({
          actor: 'devgated',
          action: 'agent',
          backend: incident.backend,
          outcome: 'ok',
          reason:
            incident.type === 'connected'
              ? `agent connected (${incident.agent})`
              : `agent disconnected: ${incident.reason}`,
        });
      }
    });
  }

  /**
   * At start: what is attached is read back from the hypervisors, and journal entries left pending
   * by a crash are settled against that truth and audited.
   */
  private async reconcile(): Promise<void> {
    await this.manager.syncAttachments();
    for (const entry of this.store.journal.pending()) {
      const device = this.manager.get({ devclass: entry.devclass, backend: entry.backend, portId: entry.portId });
      const attachedThere = device?.attachment?.frontend === entry.frontend;
      const happened = entry.op === 'attach' ? attachedThere : !attachedThere;
      if (happened) this.store.journal.complete(entry.id);
      else this.store.journal.fail(entry.id, 'DG_INTERRUPTED');
      this.devices.audit({
        actor: 'devgated',
        action: 'reconcile',
        devclass: entry.devclass,
        backend: entry.backend,
        portId: entry.portId,
        deviceId: entry.deviceId,
        frontend: entry.frontend,
        outcome: happened ? 'ok' : 'error',
        reason: `${entry.op} interrupted by a restart: ${happened ? 'it took effect' : 'it did not take effect'}`,
      });
    }
  }

  /** Streams device events, notes new devices, and audits attachments the kernel ended. */
  private watch(): void {
    // Devices seen are written in one transaction per burst, once devices stop coming for half a
    // second (5 s after the first at the latest; ADR 0015): a disk with 256 partitions must not wait
    // for 256 synchronous commits, nor its events for a commit (an fsync) in the middle of the burst.
    let seen: DeviceInfo[] = [];
    let firstAdded = 0;
    let lastEvent = 0;
    const noteSeenWhenQuiet = () => {
      const wait = Math.min(lastEvent + 500, firstAdded + 5000) - Date.now();
      if (wait > 0) setTimeout(noteSeenWhenQuiet, wait);
      else noteSeen();
    };
    const noteSeen = () => {
      const batch = seen;
      seen = [];
      if (this.stopped) return;
      this.store.transaction(() => {
        for (const device of batch) {
          if (this.store.seen.note(device).isNew) this.log.info({ device: portLabel(device.port) }, 'new device');
        }
      });
    };
    this.manager.events$.subscribe((event) => {
      this.events.publishDevice(event);
      this.idle.postpone();
      lastEvent = Date.now();
      if (event.type === 'added' && seen.push(event.device) === 1) {
        firstAdded = lastEvent;
        setTimeout(noteSeenWhenQuiet, 500);
      }
      if (event.type === 'attachment-ended') this.devices.attachmentEnded(event);
      if (event.type === 'driver-fault') this.log.warn({ driver: event.driverId, err: event.error }, 'driver fault');
    });
  }

  /**
   * USB authorization of the host's own devices (the backend read from this host's sysfs): present
   * devices at start, new ones as they appear. Every decision is audited, and so streamed.
   */
  private authorizeUsb(): void {
    const policy = this.config.usbPolicy;
    if (!policy) return;
    const source = this.manager.sources.find((s): s is LocalHostSource => s instanceof LocalHostSource);
    if (!source) throw Errors.configInvalid({ location: 'usbPolicy', reason: 'no backend reads this host' });
    const rules = parseRulesFile(fs.readFileSync(policy.rules, 'utf8'), policy.rules);
    const authorizer = new UsbAuthorizer(
      source,
      { rules, implicitTarget: policy.implicitTarget },
      { sysRoot: source.roots.sys },
    );
    authorizer.decisions$.subscribe((decision) => {
      this.devices.audit({
        actor: 'devgated (usb policy)',
        action: 'policy',
        devclass: 'usb',
        backend: source.backend,
        portId: decision.device,
        outcome: decision.error ? 'error' : decision.target === 'allow' ? 'ok' : 'denied',
        code: decision.error?.code,
        reason: `${decision.target}: ${decision.reason}`,
        details: {
          rule: decision.rule ?? null,
          attribute: decision.attribute ?? null,
          value: decision.value ?? null,
          applied: decision.applied,
        },
      });
    });
    authorizer.start();
    this.authorizer = authorizer;
  }

  private async listen(): Promise<void> {
    const { socket } = this.config;
    fs.mkdirSync(path.dirname(socket), { recursive: true, mode: 0o755 });
    const context = {
      manager: this.manager,
      store: this.store,
      devices: this.devices,
      asks: this.asks,
      events: this.events,
      version: DAEMON_VERSION,
      startedAt: new Date().toISOString(),
      drivers: () => driverReport(this.kernel, this.manager),
      afterBigWork: () => this.idle.after(),
    };
    const readOnly = buildApi(context, { readOnly: true, actor: () => 'reader' });
    const full = buildApi(context, {
      readOnly: false,
      actor: (request) => actorOf(socket, request.headers['x-devgate-actor']),
    });
    this.servers = [readOnly, full];
    // Started by devgated.socket, the read-only socket is already open as fd 3 (sd_listen_fds).
    const activated = Number(process.env.LISTEN_PID) === process.pid && Number(process.env.LISTEN_FDS) >= 1;
    await readOnly.ready();
    if (activated) {
      // systemd's socket: it made the file and removes it; devgated only listens on it.
      await new Promise<void>((resolve) => readOnly.server.listen({ fd: 3 }, resolve));
    } else {
      removeStaleSocket(socket);
      await listenOnNewSocket(readOnly.server, socket, READ_SOCKET_MODE);
      this.createdSockets.push(socket);
    }
    // Created 0600 (never wider, not even before the ACLs below are applied).
    await full.ready();
    removeStaleSocket(rwSocketPath(socket));
    await listenOnNewSocket(full.server, rwSocketPath(socket), RW_SOCKET_MODE);
    this.createdSockets.push(rwSocketPath(socket));
    applySocketAccess(this.config, socket, rwSocketPath(socket), { warn: (m) => this.log.warn(m) });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.idle.dispose();
    this.authorizer?.dispose();
    this.registry?.dispose();
    this.autoAttach.dispose();
    this.inputProxy?.dispose();
    this.inputReplug?.dispose();
    this.asks.dispose();
    // End the event streams first: a server closes only once its open responses have ended.
    this.events.complete();
    for (const server of this.servers.splice(0)) await server.close().catch(() => undefined);
    this.kernel.dispose();
    this.store.dispose();
    // Only the socket files devgated made: one systemd handed over stays for the next start.
    for (const file of this.createdSockets.splice(0)) fs.rmSync(file, { force: true });
  }

  dispose(): void {
    void this.stop();
  }
}

function sourceFor(backend: string, spec: DaemonConfig['backends'][string]): DeviceSource {
  if ('agent' in spec) return new AgentSource({ backend, control: spec.agent, exportPorts: spec.exports });
  if ('recording' in spec) return new RecordedHostSource(spec.recording, backend);
  if ('sysroot' in spec) return new LocalHostSource({ backend, roots: rootsUnder(spec.sysroot) });
  return new LocalHostSource({ backend });
}

/** devgated's log as the plugin API's Logger: fields stay fields. */
export function pinoLogger(log: Logger): PluginLogger {
  return {
    debug: (message, fields) => log.debug(fields ?? {}, message),
    info: (message, fields) => log.info(fields ?? {}, message),
    warn: (message, fields) => log.warn(fields ?? {}, message),
    error: (message, fields) => log.error(fields ?? {}, message),
  };
}

/**
 * Who is asking. The socket's permissions decide who can ask at all; Node cannot see the peer's
 * credentials, so the audit records the client's own claim (the CLI sends `uid=1000(alice)` as
 * X-Devgate-Actor) and the socket it came through.
 */
function actorOf(socket: string, claimed: string | string[] | undefined): string {
  const who = typeof claimed === 'string' && /^[\w@.:()= -]{1,80}$/.test(claimed) ? claimed : 'unnamed client';
  return `${who} via ${path.basename(rwSocketPath(socket))}`;
}

/** A socket file left by a killed devgated would make listen() fail with EADDRINUSE. */
function removeStaleSocket(file: string): void {
  const stat = fs.statSync(file, { throwIfNoEntry: false });
  if (stat?.isSocket()) fs.rmSync(file);
}
