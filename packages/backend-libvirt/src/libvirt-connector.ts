/**
 * The libvirt connector: every domain defined at one libvirt URI is a frontend under its libvirt
 * name. What runs and what is attached is kept in a cache filled by one full read at start and after
 * every reconnection of the event stream, and refreshed per domain by libvirt's events; listings and
 * `isRunning` answer from it. Attach and detach are one `virsh` process each, with the read-back in
 * the same process: the truth is the domain's live XML after the call, never virsh's message.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Observable, Subject, type Subscription } from 'rxjs';
import {
  chooseFrontendDev,
  type AttachSpec,
  type Connector,
  DevgateError,
  type DomainLifecycleEvent,
  type DomainName,
  Errors,
  type HypervisorAttachment,
  INPUT_LINUX_KIND,
  type InjectedInputEvent,
  LIBVIRT_XML_KIND,
  type Logger,
  isValidDomainName,
  type Port,
  inputSendEventArgs,
  portLabel,
  sanitizeText,
} from '@devgate/core';
import {
  DEVGATE_METADATA_URI,
  type DomainXml,
  type MetadataEntry,
  metadataXml,
  parseDomainXml,
} from './parse-domain-xml.js';
import {
  VFIO_PCI_KIND,
  aliasFor,
  chooseTargetDev,
  hasUsbController,
  planBlockDisk,
  planEvdevInputs,
  planPciHostdev,
  planUsbHostdev,
  portOfAlias,
} from './libvirt-attach.js';
import { type LibvirtEvent, type LibvirtTransport, VirshTransport, virshErrors } from './virsh-transport.js';
import { planXmlFragment } from './libvirt-generic.js';

export const LIBVIRT_CONNECTOR_ID = 'libvirt';

/** libvirt's convention: `LIBVIRT_DEFAULT_URI`, else `qemu:///system`. */
export function defaultLibvirtUri(env: NodeJS.ProcessEnv = process.env): string {
  return env.LIBVIRT_DEFAULT_URI || 'qemu:///system';
}

/** Whether a URI names this host (no host part): only then are its device paths this host's. */
export function isLocalUri(uri: string): boolean {
  return !/^[a-z0-9+]+:\/\/[^/?]/i.test(uri);
}

/**
 * For a URI of this host's system daemon (`qemu:///system`, `xen:///system`, `?socket=PATH`): the
 * reason libvirt cannot answer when no socket it would use exists, so nothing is spawned to find out
 * (every CLI command asks). Undefined when it may answer (or a remote or session URI, which can
 * start or reach a daemon by itself).
 */
export function missingLocalSocket(uri: string, runDir = '/run/libvirt'): string | undefined {
  const socket = /[?&]socket=([^&]+)/.exec(uri)?.[1];
  if (socket)
    return fs.existsSync(decodeURIComponent(socket)) ? undefined : `no socket at ${decodeURIComponent(socket)}`;
  if (!/^[a-z0-9]+:\/\/\/system$/i.test(uri)) return undefined;
  let entries: string[];
  try {
    entries = fs.readdirSync(runDir);
  } catch {
    return `${runDir} does not exist (libvirtd is not running)`;
  }
  return entries.some((e) => e === 'libvirt-sock' || /^virt[a-z]+d-sock$/.test(e))
    ? undefined
    : `no libvirt socket in ${runDir} (libvirtd is not running)`;
}

export interface LibvirtConnectorOptions {
  readonly uri: string;
  /** Default: `virsh` per call plus one `virsh event` process (VirshTransport). */
  readonly transport?: LibvirtTransport;
  /** The backend domain this host's devices are listed under (a disk a user attached maps to it). */
  readonly dom0?: DomainName;
  /**
   * Whether devgate lists a device of this host (the kernel's cache). A disk someone attached
   * without devgate is reported only when it is one devgate lists; the VMs' own system disks are not
   * devgate's business. Default: every block device of this host.
   */
  readonly isListed?: (port: Port) => boolean;
  /** Whether the URI's domains run on this host; default: the URI has no host part. */
  readonly local?: boolean;
  /** sysfs, for the device number of a USB port. Default `/sys`. */
  readonly sysRoot?: string;
  /** How long a detach waits for libvirt's device-removed. Default 5 s (libvirt's own wait). */
  readonly detachTimeoutMs?: number;
  /**
   * Where libvirt writes its QEMU pid files (`NAME.pid`), on this host. With it, a domain whose QEMU
   * died is reported stopped at once, before libvirt's own event (which comes after its cleanup,
   * 1-2 s later on a loaded host). Default: `/run/libvirt/qemu` for `qemu:///system`.
   */
  readonly pidDir?: string;
  /** How often the pids are checked. Default 200 ms. */
  readonly pidPollMs?: number;
  /**
   * Whether to follow libvirt's events (one `virsh event` process) and QEMU pids. Default true; a
   * one-shot command turns it off and confirms a detach by reading back.
   */
  readonly watch?: boolean;
  readonly id?: string;
  /** Where a domain skipped for its name is said (once per name). Default: nowhere. */
  readonly logger?: Logger;
}

/*
 * A libvirt domain not named by devgate's rule (`isValidDomainName`) is not a frontend. Refused, not
 * sanitized: sanitizing could make two domains one, or one name look like another (`evil\u202Ecod.exe`).
 */
/** Names said to be skipped, at most: a libvirt that makes up new names cannot fill memory or the log. */
const MAX_SKIPPED_NAMES = 256;

/** A name as a log can show it: printable ASCII as is, anything else as `\u{...}`. */
function visibleName(name: string): string {
  const chars = Array.from(name.slice(0, 64));
  return chars.map((c) => (/^[\x20-\x7e]$/.test(c) ? c : `\\u{${c.codePointAt(0)!.toString(16)}}`)).join('');
}

/** Running as libvirt says it (`virsh domstate`). */
const RUNNING_STATES = new Set(['running', 'paused', 'blocked', 'idle', 'in shutdown', 'pmsuspended']);

interface DomainEntry {
  readonly state: string;
  readonly xml?: DomainXml;
}

/** A cache entry whose XML is parsed when first needed, not on the path of the call that read it. */
function lazyEntry(state: string, raw: string): DomainEntry {
  let parsed: DomainXml | undefined | null = null;
  return {
    state,
    get xml() {
      if (parsed === null) {
        try {
          parsed = parseDomainXml(raw);
        } catch {
          parsed = undefined;
        }
      }
      return parsed;
    },
  };
}

/** The options reported for a device devgate did not attach. */
export const FOREIGN_OPTION = 'attached-by';

/*
 * Where one command's output ends and the next begins in a chained read-back. A domain's XML holds
 * text anyone who may edit the domain wrote (its description, its metadata), so the marks hold a
 * character XML cannot: libvirt drops it from a description and refuses it in metadata.
 */
const MARK = '\u0001DG-MARK\u0001';
const DOMAIN_MARK = '\u0001DG-DOMAIN\u0001';

export class LibvirtConnector implements Connector {
  readonly id: string;
  /** What it performs (anything else is refused by the kernel before it is asked). */
  readonly attachKinds: readonly string[] = ['block', 'usb-host', VFIO_PCI_KIND, INPUT_LINUX_KIND, LIBVIRT_XML_KIND];
  readonly uri: string;
  readonly transport: LibvirtTransport;
  readonly lifecycle$: Observable<DomainLifecycleEvent>;
  private readonly signals = new Subject<DomainLifecycleEvent>();
  private readonly cache = new Map<DomainName, DomainEntry>();
  private loaded = false;
  private eventsConnected = false;
  private disposed = false;
  private started?: Promise<void>;
  private eventSub?: Subscription;
  private refreshing: Promise<void> = Promise.resolve();
  private readonly locks = new Map<DomainName, Promise<unknown>>();
  /** Aliases devgate is attaching or detaching now: their events are devgate's own doing. */
  private readonly busy = new Set<string>();
  /** Aliases devgate changed a moment ago (`domain\0alias` -> until when): their late events too. */
  private readonly recent = new Map<string, number>();
  private readonly removedWaiters = new Map<string, () => void>();
  private readonly addedWaiters = new Map<string, () => void>();
  /**
   * Lifecycle events seen per domain: a read that started before one (a slow virsh call that still
   * saw the domain running) must not overwrite what the event said.
   */
  private readonly epochs = new Map<DomainName, number>();
  private readonly pendingRefresh = new Map<DomainName, NodeJS.Timeout>();
  private tmpDirPath?: string;
  private tmpCounter = 0;
  /** Domains skipped for their names (each said once). */
  private readonly skippedNames = new Set<string>();
  private pidTimer?: NodeJS.Timeout;

  constructor(private readonly options: LibvirtConnectorOptions) {
    this.uri = options.uri;
    this.id = options.id ?? `${LIBVIRT_CONNECTOR_ID}:${options.uri}`;
    this.transport = options.transport ?? new VirshTransport(options.uri);
    this.lifecycle$ = this.signals.asObservable();
  }

  /** Where attach XML files are written for virsh (created on first use, removed on dispose). */
  private get tmpDir(): string {
    this.tmpDirPath ??= fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-libvirt-'));
    return this.tmpDirPath;
  }

  private get local(): boolean {
    return this.options.local ?? isLocalUri(this.uri);
  }

  /**
   * Starts the event stream and reads every domain once. Resolves when the cache is filled; rejects
   * with DG_LIBVIRT_UNREACHABLE or DG_LIBVIRT_PERMISSION when libvirt cannot be used now (the event
   * stream keeps trying, and fills the cache when libvirt comes).
   */
  ready(): Promise<void> {
    if (!this.started) {
      if (this.options.watch !== false) {
        this.eventSub = this.transport.events$.subscribe((event) => this.onEvent(event));
        this.watchPids();
      }
      const missing = missingLocalSocket(this.uri);
      // Nothing listens: say so without spawning virsh; the event stream (if any) keeps trying.
      this.started = missing
        ? Promise.reject(Errors.libvirtUnreachable({ uri: this.uri, reason: missing }))
        : this.refreshAll();
      this.started.catch(() => {
        // A later `connected` retries; callers of ready() see the first failure.
      });
    }
    return this.started.then(
      () => undefined,
      (error) => (this.loaded ? undefined : Promise.reject(error)),
    );
  }

  manages(domain: DomainName): boolean {
    return this.cache.has(domain);
  }

  domains(): readonly DomainName[] {
    return [...this.cache.keys()];
  }

  /** Whether libvirt has the domain active (paused counts: it takes devices). */
  async isRunning(domain: DomainName): Promise<boolean> {
    if (!this.loaded) await this.ready();
    const entry = this.cache.get(domain) ?? (await this.refresh(domain));
    if (!entry) throw Errors.noConnector({ domain });
    return RUNNING_STATES.has(entry.state);
  }

  /** The live XML, parsed, as last read (refreshed by events). */
  async domainXml(domain: DomainName): Promise<DomainXml | undefined> {
    const entry = this.cache.get(domain);
    return entry?.xml ?? (await this.refresh(domain))?.xml;
  }

  async attach(frontend: DomainName, port: Port, spec: AttachSpec, deviceId: string): Promise<HypervisorAttachment> {
    return this.withLock(frontend, async () => {
      let entry = this.cache.get(frontend);
      if (!entry?.xml) entry = await this.refresh(frontend);
      if (!entry) throw Errors.noConnector({ domain: frontend });
      if (!RUNNING_STATES.has(entry.state) || !entry.xml)
        throw Errors.domainNotRunning({ domain: frontend, role: 'frontend' });
      const xml = entry.xml;
      let plan;
      if (spec.kind === 'block') {
        const used = new Set(
          xml.metadata.filter((e) => xml.aliases.has(e.alias)).map((e) => e.options['frontend-dev']),
        );
        const frontendDev = chooseFrontendDev(frontend, spec, used as Set<string>);
        const targetDev = chooseTargetDev(frontend, String(spec.params.bus ?? 'usb'), xml.disks);
        plan = planBlockDisk(port, spec, frontendDev, targetDev);
      } else if (spec.kind === 'usb-host') {
        if (!hasUsbController(xml)) {
          throw Errors.libvirtRefused({
            domain: frontend,
            operation: `attach ${portLabel(port)}`,
            reason: 'the domain has no USB controller',
            hint: `add one (virsh edit ${frontend}: <controller type='usb' model='qemu-xhci'/>), then restart the domain`,
          });
        }
        plan = planUsbHostdev(port, spec, this.usbDevnum(spec));
      } else if (spec.kind === VFIO_PCI_KIND) {
        plan = planPciHostdev(port, spec);
      } else if (spec.kind === INPUT_LINUX_KIND) {
        plan = planEvdevInputs(port, spec);
      } else if (spec.kind === LIBVIRT_XML_KIND) {
        plan = planXmlFragment(port, spec);
      } else {
        throw Errors.unsupported({ driverId: this.id, operation: `attach (${spec.kind})` });
      }
      const record: MetadataEntry = {
        alias: plan.alias,
        devclass: port.devclass,
        backend: port.backend,
        portId: port.portId,
        deviceId,
        options: plan.options,
      };
      const kept = xml.metadata.filter((e) => e.alias !== plan.alias && xml.aliases.has(e.alias));
      const parts = [{ alias: plan.alias, xml: plan.xml }, ...(plan.more ?? [])];
      const files = parts.map((part) => {
        const file = path.join(this.tmpDir, `attach-${process.pid}-${++this.tmpCounter}.xml`);
        fs.writeFileSync(file, part.xml);
        return file;
      });
      for (const part of parts) this.busy.add(part.alias);
      const key = aliasKey(frontend, plan.alias);
      let resolveAdded: () => void = () => undefined;
      const added = new Promise<void>((resolve) => (resolveAdded = resolve));
      this.addedWaiters.set(key, () => resolveAdded());
      let handedOver = false;
      try {
        // The identity first (metadata), then the device (each of its parts), in one virsh process.
        const result = await this.transport.call([
          this.setMetadata(frontend, [...kept, record]),
          ...files.map((file) => ['attach-device', frontend, file, '--live']),
        ]);
        const failed = virshErrors(result.stderr).some((e) => !/metadata/i.test(e));
        if (failed && parts.length > 1) {
          // Some parts may have gone in before one failed: take those out again, so nothing is left.
          await this.removeParts(
            frontend,
            parts.map((p) => p.alias),
          ).catch(() => undefined);
        }
        let confirmed = !failed;
        if (confirmed && this.eventsConnected) {
          // attach-device answers once QEMU has the device, and libvirt's device-added follows: it
          // is awaited after the answer; if it does not come, the live XML decides, and a device that
          // is not there is reported removed.
          handedOver = true;
          void this.confirmAdded(frontend, port, plan.alias, key, added);
        } else if (confirmed) {
          // No event stream (a one-shot command): the live XML decides now.
          const now = await this.refresh(frontend).catch(() => undefined);
          confirmed = parts.every((p) => now?.xml?.aliases.has(p.alias));
        }
        if (!confirmed) {
          await this.transport.call([this.setMetadata(frontend, kept)]).catch(() => undefined);
          const now = await this.refresh(frontend).catch(() => undefined);
          throw this.refusal(frontend, `attach ${portLabel(port)}`, result.stderr, now);
        }
        this.patch(frontend, (x) => ({
          ...x,
          aliases: new Set([...x.aliases, ...parts.map((p) => p.alias)]),
          disks: plan.disk ? [...x.disks, plan.disk] : x.disks,
          hostdevs: plan.hostdev ? [...x.hostdevs, plan.hostdev] : x.hostdevs,
          inputs: plan.inputs ? [...x.inputs, ...plan.inputs] : x.inputs,
          metadata: [...kept, record],
        }));
        return { port, frontend, deviceId, options: plan.options };
      } finally {
        if (!handedOver) this.addedWaiters.delete(key);
        for (const part of parts) {
          this.busy.delete(part.alias);
          this.markOwn(frontend, part.alias);
        }
        for (const file of files) fs.rmSync(file, { force: true });
      }
    });
  }

  /** After an attach answered: libvirt's device-added, else the live XML; a device not there is gone. */
  private async confirmAdded(
    domain: DomainName,
    port: Port,
    alias: string,
    key: string,
    added: Promise<void>,
  ): Promise<void> {
    try {
      if (await this.waitFor(added, 2_000)) return;
      const now = await this.refresh(domain).catch(() => undefined);
      if (now && RUNNING_STATES.has(now.state) && !now.xml?.aliases.has(alias)) {
        this.signals.next({ type: 'device-removed', domain, port });
      }
    } finally {
      this.addedWaiters.delete(key);
    }
  }

  /** Changes the cached XML of a domain by what devgate just did (applied when next read). */
  private patch(domain: DomainName, change: (xml: DomainXml) => DomainXml): void {
    const entry = this.cache.get(domain);
    if (!entry) return;
    let memo: DomainXml | undefined | null = null;
    this.cache.set(domain, {
      state: entry.state,
      get xml() {
        if (memo === null) memo = entry.xml ? change(entry.xml) : undefined;
        return memo;
      },
    });
  }

  private async waitFor(event: Promise<void>, timeoutMs: number): Promise<boolean> {
    if (timeoutMs <= 0) return false;
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([
      event.then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
    ]);
    clearTimeout(timer);
    return result;
  }

  /**
   * Detaches a device devgate attached, by its alias, and waits for libvirt's device-removed (or
   * reads back after the wait): a device that is still there is still attached, whatever virsh said.
   * A device devgate did not attach is refused (DG_LIBVIRT_NOT_DEVGATES).
   */
  async detach(frontend: DomainName, port: Port): Promise<void> {
    return this.withLock(frontend, async () => {
      const ownAliases = (x: DomainXml | undefined) =>
        [...(x?.aliases ?? [])].filter((a) => {
          const p = portOfAlias(a);
          return p !== undefined && portLabel(p) === portLabel(port) && p.devclass === port.devclass;
        });
      let entry = this.cache.get(frontend);
      if (!entry?.xml?.aliases.has(aliasFor(port))) entry = await this.refresh(frontend);
      const xml = entry?.xml;
      const aliases = ownAliases(xml);
      if (!xml || aliases.length === 0) {
        const foreign = xml && this.foreignDevices(frontend, xml).find((f) => portLabel(f.port) === portLabel(port));
        if (foreign) {
          throw Errors.libvirtNotDevgates({ device: portLabel(port), domain: frontend, alias: foreign.alias });
        }
        throw Errors.notAttached({ device: portLabel(port), frontend });
      }
      // The metadata entry stays until the next attach to this domain prunes it: an entry whose
      // alias is not in the domain is never read back as an attachment.
      await this.removeParts(frontend, aliases, `detach ${portLabel(port)}`);
    });
  }

  /**
   * Gives input events to a QEMU domain's emulated input devices: QMP `input-send-event` through
   * libvirt's `qemu-monitor-command` (libvirt has no API of its own for it; libvirt marks the domain
   * tainted by a custom monitor command, once).
   */
  async injectInput(domain: DomainName, events: readonly InjectedInputEvent[]): Promise<void> {
    if (events.length === 0) return;
    const command = JSON.stringify({ execute: 'input-send-event', arguments: { events: inputSendEventArgs(events) } });
    const result = await this.transport.call([['qemu-monitor-command', domain, command]]);
    if (virshErrors(result.stderr).length > 0) {
      throw this.refusal(domain, 'give input events', result.stderr, this.cache.get(domain));
    }
    // QEMU's own refusal is its reply, which virsh prints as it is.
    const reply = parseJson(result.stdout) as { error?: { desc?: unknown } } | undefined;
    if (reply?.error) {
      const reason = sanitizeText(String(reply.error.desc ?? 'refused'), 300) ?? 'refused';
      throw Errors.libvirtRefused({ domain, operation: 'give input events', reason });
    }
  }

  /**
   * `detach-device-alias` of devgate's aliases (the parts of one attachment), in one virsh process,
   * then libvirt's device-removed for each (or a read-back after the wait). Only devgate's own
   * aliases ever get here: a device someone else attached is never named.
   */
  private async removeParts(frontend: DomainName, aliases: readonly string[], operation?: string): Promise<void> {
    const label = operation ?? `remove ${aliases.join(', ')}`;
    const timeoutMs = this.options.detachTimeoutMs ?? 5_000;
    const gone = new Map<string, Promise<void>>();
    for (const alias of aliases) {
      this.busy.add(alias);
      gone.set(alias, new Promise<void>((resolve) => this.removedWaiters.set(aliasKey(frontend, alias), resolve)));
    }
    try {
      const result = await this.transport.call(
        aliases.map((alias) => ['detach-device-alias', frontend, alias, '--live']),
      );
      if (virshErrors(result.stderr).length > 0) {
        const now = await this.refresh(frontend);
        if (aliases.some((alias) => now?.xml?.aliases.has(alias))) {
          // Those that did go are gone; what stays is reported.
          throw this.refusal(frontend, label, result.stderr, now);
        }
        return;
      }
      const deadline = Date.now() + timeoutMs;
      for (const alias of aliases) {
        const confirmed = await this.waitGone(frontend, alias, gone.get(alias)!, Math.max(deadline - Date.now(), 0));
        if (!confirmed)
          throw Errors.detachTimeout({ domain: frontend, device: label.replace(/^detach /, ''), timeoutMs });
        this.forget(frontend, alias);
      }
    } finally {
      for (const alias of aliases) {
        this.removedWaiters.delete(aliasKey(frontend, alias));
        this.busy.delete(alias);
        this.markOwn(frontend, alias);
      }
    }
  }

  /**
   * Everything attached in every running domain, read fresh from libvirt: devgate's devices (by
   * alias, with the identity from the metadata) and, on this host, block devices someone else
   * attached (`attached-by=libvirt`), so they are shown as used and never handed out twice.
   */
  async attachments(): Promise<readonly HypervisorAttachment[]> {
    try {
      await this.ready();
      await this.refreshAll();
    } catch {
      // libvirt out of reach: none of its domains is managed now, so nothing is attached through it.
      if (!this.loaded) return [];
    }
    const result: HypervisorAttachment[] = [];
    for (const [domain, entry] of this.cache) {
      if (!RUNNING_STATES.has(entry.state) || !entry.xml) continue;
      result.push(...this.devgateDevices(domain, entry.xml));
      for (const foreign of this.foreignDevices(domain, entry.xml)) result.push(foreign.attachment);
    }
    return result;
  }

  private devgateDevices(domain: DomainName, xml: DomainXml): HypervisorAttachment[] {
    const result: HypervisorAttachment[] = [];
    const seen = new Set<string>();
    for (const alias of xml.aliases) {
      const port = portOfAlias(alias);
      // One attachment per port, however many libvirt devices (parts) it is.
      if (!port || seen.has(aliasFor(port))) continue;
      seen.add(aliasFor(port));
      const meta = xml.metadata.find((e) => e.alias === aliasFor(port));
      result.push({
        port,
        frontend: domain,
        ...(meta?.deviceId === undefined ? {} : { deviceId: meta.deviceId }),
        options: meta?.options ?? {},
      });
    }
    return result;
  }

  /** Block devices of this host that someone attached to the domain without devgate. */
  private foreignDevices(
    domain: DomainName,
    xml: DomainXml,
  ): { alias: string; port: Port; attachment: HypervisorAttachment }[] {
    if (!this.local) return [];
    const result: { alias: string; port: Port; attachment: HypervisorAttachment }[] = [];
    for (const disk of xml.disks) {
      if (disk.type !== 'block' || !disk.source || !disk.alias || portOfAlias(disk.alias)) continue;
      let node: string;
      try {
        node = fs.realpathSync(disk.source);
        if (!node.startsWith('/dev/') || !fs.statSync(node).isBlockDevice()) continue;
      } catch {
        continue;
      }
      const port = { devclass: 'block', backend: this.options.dom0 ?? 'dom0', portId: path.basename(node) };
      if (this.options.isListed && !this.options.isListed(port)) continue;
      const options = {
        'read-only': disk.readOnly ? 'yes' : 'no',
        ...(disk.targetDev ? { 'frontend-dev': disk.targetDev } : {}),
        [FOREIGN_OPTION]: 'libvirt',
      };
      result.push({ alias: disk.alias, port, attachment: { port, frontend: domain, options } });
    }
    return result;
  }

  // -- reading libvirt

  private setMetadata(domain: DomainName, entries: readonly MetadataEntry[]): string[] {
    return [
      'metadata',
      domain,
      '--uri',
      DEVGATE_METADATA_URI,
      '--key',
      'devgate',
      '--live',
      '--set',
      metadataXml(entries),
    ];
  }

  private readBack(domain: DomainName): string[][] {
    return [
      ['echo', MARK],
      ['domstate', domain],
      ['echo', MARK],
      ['dumpxml', domain],
    ];
  }

  /** Parses a read-back (`echo MARK; domstate; echo MARK; dumpxml`) into the cache. */
  private parseReadBack(domain: DomainName, stdout: string): DomainEntry | undefined {
    const parts = stdout.split(MARK);
    if (parts.length < 3) return undefined;
    const state = parts[1].trim().split('\n')[0]?.trim() ?? '';
    const text = parts.slice(2).join(MARK).trim();
    if (!state) {
      // The domain is gone (undefined) or unreadable.
      return undefined;
    }
    const entry = text ? lazyEntry(state, text) : { state };
    this.cache.set(domain, entry);
    return entry;
  }

  /** Re-reads one domain; undefined (and dropped from the cache) when libvirt no longer has it. */
  private async refresh(domain: DomainName): Promise<DomainEntry | undefined> {
    // Never a frontend, so never read into the cache (isRunning and attach ask with any name).
    if (!isValidDomainName(domain)) return undefined;
    const epoch = this.epochs.get(domain) ?? 0;
    const result = await this.transport.call(this.readBack(domain));
    if ((this.epochs.get(domain) ?? 0) !== epoch) {
      // An event came while this read was on its way: it is newer; read again after it.
      this.scheduleRefresh(domain);
      return this.cache.get(domain);
    }
    const before = this.cache.get(domain)?.xml;
    const entry = this.parseReadBack(domain, result.stdout);
    if (!entry && /failed to get domain|Domain not found/i.test(result.stderr)) this.cache.delete(domain);
    if (before && entry?.xml && RUNNING_STATES.has(entry.state)) this.reportForeignAdded(domain, before, entry.xml);
    return entry;
  }

  /** Disks of this host someone attached without devgate since `before`: the kernel holds them for that domain. */
  private reportForeignAdded(domain: DomainName, before: DomainXml, after: DomainXml): void {
    const known = new Set(this.foreignDevices(domain, before).map((f) => f.alias));
    for (const foreign of this.foreignDevices(domain, after)) {
      if (!known.has(foreign.alias))
        this.signals.next({ type: 'device-added', domain, attachment: foreign.attachment });
    }
  }

  /** Re-reads every domain (serialized), and reports what changed while nobody was listening. */
  private refreshAll(): Promise<void> {
    const run = this.refreshing.then(async () => {
      const list = await this.transport.call([['list', '--all', '--name']]);
      const errors = virshErrors(list.stderr);
      if (errors.length > 0 && !list.stdout.trim()) {
        throw Errors.libvirtUnreachable({ uri: this.uri, reason: errors.join('; ') });
      }
      // Not trimmed: `work ` is another domain than `work`, and is skipped for its name.
      const names = list.stdout
        .split('\n')
        .map((l) => l.replace(/\r$/, ''))
        .filter((l) => l.length > 0 && this.isDomainName(l));
      const before = new Map(this.cache);
      const epochs = new Map(this.epochs);
      const fresh = new Map<DomainName, DomainEntry>();
      if (names.length > 0) {
        const result = await this.transport.call(
          names.flatMap((name) => [['echo', DOMAIN_MARK], ...this.readBack(name)]),
        );
        const chunks = result.stdout.split(DOMAIN_MARK).slice(1);
        names.forEach((name, i) => {
          const entry = chunks[i] !== undefined ? this.parseChunk(chunks[i]) : undefined;
          const current = this.cache.get(name);
          if ((this.epochs.get(name) ?? 0) !== (epochs.get(name) ?? 0) && current) {
            // An event about it came meanwhile: it is newer than this read.
            fresh.set(name, current);
            this.scheduleRefresh(name);
          } else if (entry) fresh.set(name, entry);
        });
      }
      this.cache.clear();
      for (const [name, entry] of fresh) this.cache.set(name, entry);
      if (this.loaded) this.reportChanges(before, fresh);
      this.loaded = true;
    });
    this.refreshing = run.catch(() => undefined);
    return run;
  }

  private parseChunk(chunk: string): DomainEntry | undefined {
    const parts = chunk.split(MARK);
    if (parts.length < 3) return undefined;
    const state = parts[1].trim().split('\n')[0]?.trim() ?? '';
    if (!state) return undefined;
    return lazyEntry(state, parts.slice(2).join(MARK).trim());
  }

  /** After a reconnection: what stopped, started, vanished or lost a device meanwhile. */
  private reportChanges(
    before: ReadonlyMap<DomainName, DomainEntry>,
    after: ReadonlyMap<DomainName, DomainEntry>,
  ): void {
    for (const [domain, old] of before) {
      const now = after.get(domain);
      if (!now) {
        this.signals.next({ type: 'undefined', domain });
        continue;
      }
      const wasRunning = RUNNING_STATES.has(old.state);
      const isRunning = RUNNING_STATES.has(now.state);
      if (wasRunning && !isRunning) this.signals.next({ type: 'stopped', domain });
      else if (!wasRunning && isRunning) this.signals.next({ type: 'started', domain });
      else if (isRunning && old.xml && now.xml) {
        const reported = new Set<string>();
        for (const alias of old.xml.aliases) {
          const port = portOfAlias(alias);
          if (port && !now.xml.aliases.has(alias) && !this.busy.has(alias) && !reported.has(aliasFor(port))) {
            reported.add(aliasFor(port));
            this.signals.next({ type: 'device-removed', domain, port });
          }
        }
        for (const foreign of this.foreignDevices(domain, old.xml)) {
          if (!now.xml.aliases.has(foreign.alias))
            this.signals.next({ type: 'device-removed', domain, port: foreign.port });
        }
        this.reportForeignAdded(domain, old.xml, now.xml);
      }
    }
    for (const [domain, now] of after) {
      if (!before.has(domain) && RUNNING_STATES.has(now.state)) this.signals.next({ type: 'started', domain });
    }
  }

  // -- events

  private onEvent(event: LibvirtEvent): void {
    if (this.disposed) return;
    if ('domain' in event && !this.isDomainName(event.domain)) return;
    switch (event.kind) {
      case 'connected':
        this.eventsConnected = true;
        // Whatever happened while the stream was down (a libvirtd restart) is read back now.
        void this.refreshAll().catch(() => undefined);
        return;
      case 'disconnected':
        this.eventsConnected = false;
        return;
      case 'lifecycle':
        return this.onLifecycle(event.domain, event.detail);
      case 'device-removed': {
        const waiter = this.removedWaiters.get(aliasKey(event.domain, event.alias));
        if (waiter) {
          this.forget(event.domain, event.alias);
          return waiter();
        }
        const xml = this.cache.get(event.domain)?.xml;
        const port =
          portOfAlias(event.alias) ??
          (xml ? this.foreignDevices(event.domain, xml).find((f) => f.alias === event.alias)?.port : undefined);
        this.forget(event.domain, event.alias);
        if (port && !this.busy.has(event.alias))
          this.signals.next({ type: 'device-removed', domain: event.domain, port });
        if (this.isOwn(event.domain, event.alias)) return;
        // Someone else's device: read the domain again soon (once for a burst of changes).
        return this.scheduleRefresh(event.domain, 1_000);
      }
      case 'device-added':
        this.addedWaiters.get(aliasKey(event.domain, event.alias))?.();
        if (this.busy.has(event.alias) || this.isOwn(event.domain, event.alias)) return;
        return this.scheduleRefresh(event.domain, 1_000);
      case 'device-removal-failed':
        return this.scheduleRefresh(event.domain);
      default:
        // Only devgate's own namespace matters, and devgate reads it back after each change it makes.
        if (event.event === 'metadata-change') return;
        return this.scheduleRefresh(event.domain);
    }
  }

  private onLifecycle(domain: DomainName, detail: string): void {
    this.epochs.set(domain, (this.epochs.get(domain) ?? 0) + 1);
    const what = detail.split(/\s+/)[0];
    const entry = this.cache.get(domain);
    const setState = (state: string) => this.cache.set(domain, { ...entry, state });
    switch (what) {
      case 'Started':
        setState('running');
        this.signals.next({ type: 'started', domain });
        break;
      case 'Suspended':
      case 'PMSuspended':
        setState('paused');
        this.signals.next({ type: 'paused', domain });
        break;
      case 'Resumed':
        setState('running');
        this.signals.next({ type: 'resumed', domain });
        break;
      case 'Stopped':
      case 'Crashed':
        // Said once: the pid watch may have seen it before libvirt did.
        if (entry && !RUNNING_STATES.has(entry.state)) break;
        // The devices went with the machine: none of them is attached any more.
        this.cache.set(domain, {
          state: 'shut off',
          xml: entry?.xml && { ...entry.xml, aliases: new Set(), disks: [], hostdevs: [], inputs: [], metadata: [] },
        });
        this.signals.next({ type: 'stopped', domain });
        // A detach waiting for libvirt's device-removed is done: the device went with the machine.
        for (const [key, removed] of this.removedWaiters) if (key.startsWith(`${domain}\0`)) removed();
        break;
      case 'Undefined':
        if (entry && RUNNING_STATES.has(entry.state)) {
          // `virsh undefine` of a running domain: it runs on, transient, with its devices. Its
          // Stopped comes when it ends, and the read then finds it gone.
          break;
        }
        this.cache.delete(domain);
        this.signals.next({ type: 'undefined', domain });
        return;
      default:
        break;
    }
    this.scheduleRefresh(domain);
  }

  private get pidDir(): string | undefined {
    if (this.options.pidDir !== undefined) return this.options.pidDir || undefined;
    return this.uri === 'qemu:///system' ? '/run/libvirt/qemu' : undefined;
  }

  /** A running domain whose QEMU process is gone (or a zombie) has stopped, whatever libvirt says yet. */
  private watchPids(): void {
    const dir = this.pidDir;
    if (!dir || !this.local) return;
    this.pidTimer = setInterval(() => {
      for (const [domain, entry] of this.cache) {
        if (!RUNNING_STATES.has(entry.state)) continue;
        let pid: number;
        try {
          pid = Number(fs.readFileSync(path.join(dir, `${domain}.pid`), 'utf8').trim());
        } catch {
          continue; // not written yet, or already removed by libvirt: its event says it
        }
        if (!(pid > 0)) continue;
        let state: string | undefined;
        try {
          const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
          state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
        } catch {
          state = undefined;
        }
        if (state === undefined || state === 'Z' || state === 'X')
          this.onLifecycle(domain, 'Stopped Failed (process gone)');
      }
    }, this.options.pidPollMs ?? 200);
    this.pidTimer.unref?.();
  }

  /** Whether libvirt's name is a devgate domain name; a domain named otherwise is skipped, said once. */
  private isDomainName(name: string): boolean {
    if (isValidDomainName(name)) return true;
    if (!this.skippedNames.has(name) && this.skippedNames.size < MAX_SKIPPED_NAMES) {
      this.skippedNames.add(name);
      this.options.logger?.warn('libvirt domain skipped: its name is not a valid domain name', {
        uri: this.uri,
        name: visibleName(name),
        rule: 'at most 31 characters: a letter, then letters, digits, _ . or -',
      });
    }
    return false;
  }

  private markOwn(domain: DomainName, alias: string): void {
    const now = Date.now();
    for (const [key, until] of this.recent) if (until < now) this.recent.delete(key);
    this.recent.set(aliasKey(domain, alias), now + 3_000);
  }

  private isOwn(domain: DomainName, alias: string): boolean {
    return (this.recent.get(aliasKey(domain, alias)) ?? 0) >= Date.now();
  }

  private scheduleRefresh(domain: DomainName, delayMs = 50): void {
    if (this.pendingRefresh.has(domain) || this.disposed) return;
    const timer = setTimeout(() => {
      this.pendingRefresh.delete(domain);
      if (this.locks.has(domain)) return this.scheduleRefresh(domain);
      void this.refresh(domain).catch(() => undefined);
    }, delayMs);
    timer.unref?.();
    this.pendingRefresh.set(domain, timer);
  }

  /** Drops a removed device from the cached XML (its event says it is gone). */
  private forget(domain: DomainName, alias: string): void {
    const entry = this.cache.get(domain);
    if (!entry?.xml) return;
    const aliases = new Set(entry.xml.aliases);
    aliases.delete(alias);
    this.cache.set(domain, {
      ...entry,
      xml: {
        ...entry.xml,
        aliases,
        disks: entry.xml.disks.filter((d) => d.alias !== alias),
        hostdevs: entry.xml.hostdevs.filter((d) => d.alias !== alias),
        inputs: entry.xml.inputs.filter((d) => d.alias !== alias),
        metadata: entry.xml.metadata.filter((e) => e.alias !== alias),
      },
    });
  }

  /** device-removed, or (without an event stream, or after the wait) the device gone in a read-back. */
  private async waitGone(domain: DomainName, alias: string, gone: Promise<void>, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      const step = this.eventsConnected ? left : Math.min(left, 100);
      let timer: NodeJS.Timeout | undefined;
      const arrived = await Promise.race([
        gone.then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(step, 0)))),
      ]);
      clearTimeout(timer);
      if (arrived) return true;
      const now = await this.refresh(domain).catch(() => undefined);
      if (now && !now.xml?.aliases.has(alias)) return true;
      if (!now && !this.cache.has(domain)) return true;
      if (Date.now() >= deadline) return false;
    }
  }

  // -- errors

  private refusal(domain: DomainName, operation: string, stderr: string, entry?: DomainEntry): Error {
    const errors = virshErrors(stderr);
    // "Failed to attach device from FILE" names a temp file; libvirt's reason is the line after it.
    const useful = errors.filter((e) => !/^Failed to (attach|detach) device/.test(e));
    // The same reason for each part of a device (every event node of an input device) is said once.
    const reason =
      [...new Set(useful.length > 0 ? useful : errors)].join('; ') || 'the device did not appear in the domain';
    if (entry && !RUNNING_STATES.has(entry.state)) return Errors.domainNotRunning({ domain, role: 'frontend' });
    if (/domain is not running/i.test(reason)) return Errors.domainNotRunning({ domain, role: 'frontend' });
    let hint: string | undefined;
    if (/passthrough of host PCI devices|VFIO PCI passthrough|IOMMU/i.test(reason)) {
      hint =
        'the host where the domain runs needs an IOMMU (VT-d or AMD-Vi, booted with intel_iommu=on or amd_iommu=on) ' +
        'and vfio-pci; nothing was unbound or attached';
    } else if (/Write filtering of PCI device/i.test(reason)) {
      hint =
        "permissive is a Xen option: this domain's libvirt driver cannot honour it; attach without -o permissive=True";
    } else if (/input device on bus 'none' cannot be hot plugged/i.test(reason)) {
      hint =
        "this libvirt cannot hot-plug an <input type='evdev'> into a running domain (libvirt issue #529); " +
        'add it to the domain definition (virsh edit) for the next start, or use a QEMU frontend';
    } else if (/usb/i.test(reason) && /controller|no .*bus|No free USB ports|hub/i.test(reason)) {
      hint = `the domain needs a USB controller with a free port: virsh edit ${domain}, add <controller type='usb' model='qemu-xhci'/>, restart it`;
    } else if (/PCI|slot|pcie-root-port|hotplug/i.test(reason)) {
      hint = `virtio needs a free PCI slot: add a <controller type='pci' model='pcie-root-port'/> (virsh edit ${domain}) and restart, or attach on the USB bus (the default)`;
    } else if (/Did not find USB device|\/sys\/bus\/usb|\/dev\/bus\/usb|not accessible|No such device/i.test(reason)) {
      hint = 'the device must be plugged into the host where the domain runs; check it there (lsusb, ls /dev)';
    } else if (/write.*lock|shared "write" lock|in use/i.test(reason)) {
      hint = 'something else has the device open for writing (another VM?); detach it there, or attach it --ro';
    }
    return Errors.libvirtRefused({ domain, operation, reason, ...(hint ? { hint } : {}) });
  }

  private usbDevnum(spec: AttachSpec): number | undefined {
    const { hostbus, hostport } = spec.params;
    if (hostbus === undefined) return undefined;
    const file = path.join(this.options.sysRoot ?? '/sys', 'bus', 'usb', 'devices', `${hostbus}-${hostport}`, 'devnum');
    try {
      const devnum = Number(fs.readFileSync(file, 'utf8').trim());
      return Number.isInteger(devnum) && devnum > 0 ? devnum : undefined;
    } catch (error) {
      throw Errors.libvirtRefused({
        domain: 'the host',
        operation: `find USB port ${hostbus}-${hostport}`,
        reason: `no device there (${(error as Error).message})`,
        hint: 'libvirt addresses a USB device by bus and device number; plug it in, or attach it with -o by=id',
      });
    }
  }

  private async withLock<T>(domain: DomainName, action: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(domain) ?? Promise.resolve();
    const run = previous.then(action, action);
    const tail = run.catch(() => undefined);
    this.locks.set(domain, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(domain) === tail) this.locks.delete(domain);
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.eventSub?.unsubscribe();
    if (this.pidTimer) clearInterval(this.pidTimer);
    for (const timer of this.pendingRefresh.values()) clearTimeout(timer);
    this.pendingRefresh.clear();
    this.signals.complete();
    this.transport.dispose();
    if (this.tmpDirPath) fs.rmSync(this.tmpDirPath, { recursive: true, force: true });
  }
}

export function isLibvirtError(error: unknown): boolean {
  return error instanceof DevgateError && error.code.startsWith('DG_LIBVIRT_');
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** One device of one domain, as the waiters and the recent-removals table key it. */
function aliasKey(domain: string, alias: string): string {
  return `${domain}\0${alias}`;
}
