import * as fs from 'node:fs';
import * as net from 'node:net';
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
import { UsbAuthorizer, type UsbGuardRule, parseRulesFile } from '@devgate/driver-usb';
import { InputProxy, InputReplug, forwardInput, inputProxyPolicy } from '@devgate/driver-input';
import { AgentSource } from '@devgate/backend-agent';
import { defaultRegistryFile } from '@devgate/backend-qemu';
import {
  AUDIT_KEEP_DAYS,
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
  readTrustedFile,
  readTrustedRegistry,
  requireTrustedFile,
} from '@devgate/service';
import { AskService } from './services/asks.js';
import { AutoAttach } from './services/auto-attach.js';
import { RegistryWatch } from './services/registry-watch.js';
import { AuditRetention } from './services/audit-retention.js';
import { RemovedDomains } from './services/removed-domains.js';
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
  /** Backends whose agent had not answered when what is attached was read back (see reconcileWhenReady). */
  private readonly unread = new Set<string>();
  private authorizer?: UsbAuthorizer;
  private stopped = false;
  private registry?: RegistryWatch;
  private retention?: AuditRetention;
  private removedDomains?: RemovedDomains;
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
    // Before anything is opened or reconciled: a second devgated must leave the first one's state alone.
    for (const file of ownSocketPaths(config.socket)) await checkNotListening(file);
    // What it reads as root besides its configuration, checked as the configuration is, before
    // anything is opened: which devices the host lets in, and which QMP sockets and agents are VMs.
    const usbRules =
      config.usbPolicy && parseRulesFile(readTrustedFile(config.usbPolicy.rules), config.usbPolicy.rules);
    requireTrustedFile(config.domains ?? defaultRegistryFile());
    const store = openStateStore(config.stateDir);
    const events = new DaemonEvents();
    // Every domain at the configured libvirt URIs is a frontend; a disk someone attached there maps to this host.
    const localBackend = Object.entries(config.backends).find(([, spec]) => 'source' in spec)?.[0] ?? 'dom0';
    const listing: { manager?: DeviceManager } = {};
    const isListed = (port: Port) => listing.manager?.get(port) !== undefined;
    const { modules, libvirt } = builtinModules({
      domains: config.domains,
      // Every re-read of the registry by the QEMU connector (which socket is which VM) is checked
      // as the start checked it; a refusal keeps what it read, and the registry watch reports it.
      registryReader: readTrustedRegistry,
      libvirt: { uris: config.libvirt?.uris ?? [], dom0: localBackend, isListed, logger: pinoLogger(log) },
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
      daemon.keepAudit(config.audit ? config.audit.keepDays : AUDIT_KEEP_DAYS);
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
        // As its refusal at start is (main.ts), with the same code; audited too, since devgated runs on.
        refused: (error) => {
          log.error(
            { err: error, code: error.code, reason: error.message },
            'domain registry refused; backends unchanged',
          );
          devices.audit({
            actor: 'devgated',
            action: 'registry',
            outcome: 'denied',
            code: error.code,
            reason: error.message,
          });
        },
      });
      daemon.registry.start();
      // Their first trees are awaited (bounded) before what is attached is read back, so an
      // attachment that outlived a restart of devgated is not taken for a vanished device. One that
      // does not answer in time is read back when it does: its attachments are kept meanwhile.
      const starting = agents();
      const answered = await Promise.all(starting.map((agent) => agent.whenReady(5_000)));
      starting.forEach((agent, i) => answered[i] || daemon.unread.add(agent.backend));
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
      for (const agent of starting) if (daemon.unread.has(agent.backend)) void daemon.reconcileWhenReady(agent);
      daemon.authorizeUsb(usbRules);
      daemon.removedDomains = new RemovedDomains(manager, store, events, devices, (fields, message) =>
        log.warn(fields, message),
      );
      daemon.removedDomains.start();
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

  /** Prunes the audit log now and about once a day; `null` keeps every entry. */
  private keepAudit(keepDays: number | null): void {
    if (keepDays === null) return;
    this.retention = new AuditRetention(this.store, {
      keepDays,
      pruned: (entry) => {
        this.log.info({ pruned: entry.details?.pruned, keepDays }, 'audit log pruned');
        this.events.publish({ type: 'audit', entry });
      },
      failed: (error) =>
        this.log.warn({ code: errorCode(error), reason: (error as Error).message }, 'audit log not pruned'),
      warn: (fields, message) => this.log.warn(fields, message),
    });
    this.retention.start();
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

  /** A USB VM whose agent answers after devgated started: what is attached of it is read back then. */
  private async reconcileWhenReady(agent: AgentSource): Promise<void> {
    const gone = () => this.stopped || !this.manager.sources.includes(agent);
    while (!(await agent.whenReady(60_000))) if (gone()) return;
    if (gone()) return;
    this.unread.delete(agent.backend);
    await this.reconcile(agent.backend).catch((error: unknown) =>
      this.log.warn({ backend: agent.backend, code: errorCode(error) }, 'reading back attachments failed'),
    );
  }

  /**
   * At start: what is attached is read back from the hypervisors, and journal entries left pending
   * by a crash are settled against that truth and audited.
   */
  private async reconcile(backend?: string): Promise<void> {
    await this.manager.syncAttachments({ complete: (name) => !this.unread.has(name), backend });
    for (const entry of this.store.journal.pending()) {
      if (this.unread.has(entry.backend) || (backend !== undefined && entry.backend !== backend)) continue;
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
    // What the store refuses (a driver package's port id such as `ttyS0@pnp0`) is skipped and warned
    // once per port and code: one driver's bad data must never take devgated down.
    const warned = new Set<string>();
    const noteOne = (device: DeviceInfo) => {
      const port = portLabel(device.port);
      try {
        if (this.store.seen.note(device).isNew) this.log.info({ device: port }, 'new device');
      } catch (error) {
        const key = `${port} ${errorCode(error)}`;
        if (warned.has(key)) return;
        // Bounded: a backend inventing port ids must not grow it without end.
        if (warned.size >= 1024) warned.clear();
        warned.add(key);
        this.log.warn(
          { device: port, code: errorCode(error), reason: (error as Error).message },
          'device not recorded as seen: the state store refused it',
        );
      }
    };
    const noteSeen = () => {
      const batch = seen;
      seen = [];
      if (this.stopped) return;
      try {
        this.store.transaction(() => batch.forEach(noteOne));
      } catch (error) {
        // The commit itself failed (a locked database): the next sighting notes these devices again.
        this.log.warn({ code: errorCode(error), reason: (error as Error).message }, 'devices seen not written');
      }
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
    // The devices already listed when devgated started came before this subscription: seen too.
    const present = this.manager.list({ includeHidden: true });
    if (present.length > 0) {
      seen.push(...present);
      firstAdded = lastEvent = Date.now();
      setTimeout(noteSeenWhenQuiet, 500);
    }
  }

  /**
   * USB authorization of the host's own devices (the backend read from this host's sysfs): present
   * devices at start, new ones as they appear. Every decision is audited, and so streamed.
   */
  private authorizeUsb(rules: UsbGuardRule[] | undefined): void {
    const policy = this.config.usbPolicy;
    if (!policy || !rules) return;
    const source = this.manager.sources.find((s): s is LocalHostSource => s instanceof LocalHostSource);
    if (!source) throw Errors.configInvalid({ location: 'usbPolicy', reason: 'no backend reads this host' });
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
      log: this.log,
    };
    const readOnly = buildApi(context, { readOnly: true, actor: () => 'reader' });
    const full = buildApi(context, {
      readOnly: false,
      actor: (request) => actorOf(socket, request.headers['x-devgate-actor']),
    });
    this.servers = [readOnly, full];
    await readOnly.ready();
    if (socketActivated()) {
      // systemd's socket: it made the file and removes it; devgated only listens on it.
      await new Promise<void>((resolve) => readOnly.server.listen({ fd: 3 }, resolve));
    } else {
      await removeStaleSocket(socket);
      await listenOnNewSocket(readOnly.server, socket, READ_SOCKET_MODE);
      this.createdSockets.push(socket);
    }
    // Created 0600 (never wider, not even before the ACLs below are applied).
    await full.ready();
    await removeStaleSocket(rwSocketPath(socket));
    await listenOnNewSocket(full.server, rwSocketPath(socket), RW_SOCKET_MODE);
    this.createdSockets.push(rwSocketPath(socket));
    applySocketAccess(this.config, socket, rwSocketPath(socket), { warn: (m) => this.log.warn(m) });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.idle.dispose();
    this.authorizer?.dispose();
    this.registry?.dispose();
    this.retention?.dispose();
    this.removedDomains?.dispose();
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

/** Started by devgated.socket, the read-only socket is already open as fd 3 (sd_listen_fds). */
function socketActivated(): boolean {
  return Number(process.env.LISTEN_PID) === process.pid && Number(process.env.LISTEN_FDS) >= 1;
}

/** The socket files devgated makes itself: under socket activation, systemd made the read-only one. */
function ownSocketPaths(socket: string): string[] {
  return socketActivated() ? [rwSocketPath(socket)] : [socket, rwSocketPath(socket)];
}

/**
 * A socket file left by a killed devgated would make listen() fail with EADDRINUSE, so it goes; one
 * that something still answers on is a running devgated's, and removing it would cut off its clients.
 */
async function removeStaleSocket(file: string): Promise<void> {
  if ((await checkNotListening(file)) === 'stale') fs.rmSync(file, { force: true });
}

/** Whether `file` is a socket nobody listens on ('stale'); throws when something may still listen. */
function checkNotListening(file: string): Promise<'absent' | 'stale'> {
  if (!fs.statSync(file, { throwIfNoEntry: false })?.isSocket()) return Promise.resolve('absent');
  return new Promise((resolve, reject) => {
    const probe = net.connect({ path: file });
    probe.once('connect', () => {
      probe.destroy();
      reject(Errors.daemonAlreadyRunning({ socket: file }));
    });
    probe.once('error', (error: NodeJS.ErrnoException) => {
      probe.destroy();
      if (error.code === 'ECONNREFUSED') resolve('stale');
      else if (error.code === 'ENOENT') resolve('absent');
      // EAGAIN: a listener whose backlog is full. Anything else (EACCES) proves nothing either way.
      else
        reject(
          Errors.daemonAlreadyRunning({
            socket: file,
            reason: error.code === 'EAGAIN' ? undefined : `connecting to it failed with ${error.code ?? error.message}`,
          }),
        );
    });
  });
}
