/**
 * The QEMU connector: attaches and detaches devices over QMP and reads attachments back from QEMU.
 * Domains and their sockets come from the domain registry, re-read on every call so `lab up` and
 * `lab down` are seen at once. One QMP connection per socket is kept open and reused: QEMU serves
 * one QMP client at a time, so the connector (in devgated) is meant to be that client.
 */
import {
  chooseFrontendDev,
  type AttachSpec,
  type Connector,
  errorCode,
  type DomainLifecycleEvent,
  type DomainName,
  Errors,
  type HypervisorAttachment,
  type InjectedInputEvent,
  INPUT_LINUX_KIND,
  type Port,
  inputSendEventArgs,
  QEMU_DEVICE_KIND,
} from '@devgate/core';
import * as fs from 'node:fs';
import { Observable, Subject, type Subscription, share } from 'rxjs';
import { isQemuAlive } from './lab.js';
import { type DomainRegistryData, defaultRegistryFile, getDomain, readRegistrySync } from './domain-registry.js';
import { QmpClient, type QmpClientOptions } from './qmp-client.js';
import {
  type AttachmentRecord,
  cdTransportId,
  decodeQdevId,
  planBlockAttach,
  planUsbHostAttach,
  planUsbRedirAttach,
  toHypervisorAttachment,
} from './qemu-attach.js';
import { attachInputLinux, detachInputLinux, inputLinuxAttachments } from './qemu-input.js';
import { PCI_UNPLUG_TIMEOUT_MS, planVfioAttach } from './vfio-attach.js';
import {
  genericNodeName,
  isGenericNodeName,
  planQemuDevice,
  qemuDeviceSteps,
  removeGenericBackends,
} from './qemu-generic.js';

export const QEMU_CONNECTOR_ID = 'qemu';

export interface QemuConnectorOptions extends QmpClientOptions {
  /** Default: `defaultRegistryFile()`, resolved when the connector is created. */
  readonly registryFile?: string;
  /**
   * How the registry file is read; default `readRegistrySync`. devgated gives its StrictModes check
   * (`readTrustedRegistry`): a DG_CONFIG_INVALID it throws is a refusal, and the registry read before
   * stays until the file changes again. The connector does not report it: devgated's registry watch
   * follows the same file with the same check, and reports each refusal once.
   */
  readonly registryReader?: (file: string) => DomainRegistryData;
  /** How long a guest has to acknowledge an unplug (DEVICE_DELETED). Default 5 s. */
  readonly unplugTimeoutMs?: number;
  /** How often lifecycle$ looks for domains that started or vanished. Default 1 s. */
  readonly lifecyclePollMs?: number;
}

/** `query-status`. `status` is QEMU's RunState: prelaunch, running, paused, shutdown, ... */
export interface QemuStatus {
  readonly status: string;
  readonly running: boolean;
  readonly singlestep?: boolean;
}

/** One `query-block` entry (the fields devgate reads; QEMU sends more). */
export interface QemuBlockInfo {
  readonly device: string;
  readonly qdev?: string;
  readonly removable: boolean;
  readonly locked: boolean;
  readonly tray_open?: boolean;
  readonly inserted?: {
    readonly 'node-name'?: string;
    readonly file: string;
    readonly drv: string;
    readonly ro: boolean;
  };
  readonly [key: string]: unknown;
}

/** One `query-pci` bus (the fields devgate reads; QEMU sends more). */
export interface QemuPciBus {
  readonly bus: number;
  readonly devices: readonly QemuPciDevice[];
}

export interface QemuPciDevice {
  readonly bus: number;
  readonly slot: number;
  readonly function: number;
  readonly qdev_id: string;
  readonly class_info: { readonly class: number; readonly desc?: string };
  readonly id: { readonly vendor: number; readonly device: number };
  readonly pci_bridge?: { readonly devices?: readonly QemuPciDevice[]; readonly [key: string]: unknown };
  readonly [key: string]: unknown;
}

/** A connection's devgate devices as last read, and its subscription to DEVICE_DELETED for them. */
interface KnownDevices {
  readonly devices: Map<string, AttachmentRecord>;
  readonly events: Subscription;
}

/** Run states in which the QEMU process exists but the machine is gone (only with -no-shutdown). */
const NOT_RUNNING_STATES = new Set(['shutdown']);

export class QemuConnector implements Connector {
  readonly id = QEMU_CONNECTOR_ID;
  /** What it performs (anything else is refused by the kernel before it is asked). */
  readonly attachKinds: readonly string[] = [
    'block',
    'usb-host',
    'usb-redir',
    'vfio-pci',
    INPUT_LINUX_KIND,
    QEMU_DEVICE_KIND,
  ];
  readonly registryFile: string;
  private readonly clients = new Map<string, Promise<QmpClient>>();
  private disposed = false;
  private cachedRegistry?: { version: string; data: DomainRegistryData };
  /** A connection's known devgate devices, and what keeps them up to date (see devgateDevices). */
  private readonly peripherals = new WeakMap<QmpClient, KnownDevices>();
  private readonly shutDown = new WeakMap<QmpClient, boolean>();
  /** What QEMU tells on its own (events, a closed socket), before lifecycle$ dedupes it. */
  private readonly signals = new Subject<DomainLifecycleEvent>();
  /** qdev ids devgate is unplugging: their DEVICE_DELETED is devgate's own doing. */
  private readonly unplugging = new Set<string>();
  /** qdev ids devgate is adding: their chardev, block node or object is there before the device. */
  private readonly adding = new Set<string>();

  /**
   * Domains starting, stopping, pausing and vanishing from the registry, and devgate devices that
   * vanished from a domain. A closed QMP socket or SHUTDOWN is seen at once; a domain that starts
   * (or is registered) is found by a poll of the registry. Hot and shared while subscribed.
   */
  readonly lifecycle$: Observable<DomainLifecycleEvent>;

  constructor(private readonly options: QemuConnectorOptions = {}) {
    this.registryFile = options.registryFile ?? defaultRegistryFile();
    this.lifecycle$ = new Observable<DomainLifecycleEvent>((subscriber) => {
      const known = new Map<DomainName, 'running' | 'paused' | 'stopped'>();
      // The first poll learns what runs; a domain registered after it that runs has started.
      let learned = false;
      // What the poll finds is an event only when it differs from what was known; what QEMU said
      // itself always is (the kernel's handling of each is idempotent).
      const note = (event: DomainLifecycleEvent, fromQemu = false) => {
        if (event.type === 'device-removed') return subscriber.next(event);
        const before = known.get(event.domain);
        const state =
          event.type === 'paused'
            ? 'paused'
            : event.type === 'started' || event.type === 'resumed'
              ? 'running'
              : 'stopped';
        if (event.type === 'undefined') known.delete(event.domain);
        else known.set(event.domain, state);
        const changed = before === undefined ? learned && state === 'running' : before !== state;
        if (fromQemu || changed || event.type === 'undefined') subscriber.next(event);
      };
      const signals = this.signals.subscribe((event) => note(event, true));
      let polling = false;
      const poll = async () => {
        if (polling || this.disposed) return;
        polling = true;
        try {
          const domains = new Set(this.domains());
          for (const domain of known.keys()) if (!domains.has(domain)) note({ type: 'undefined', domain });
          for (const domain of domains) {
            const running = await this.isRunning(domain).catch(() => false);
            if (!running) note({ type: 'stopped', domain });
            else if (known.get(domain) !== 'paused') note({ type: 'started', domain });
          }
          learned = true;
        } catch {
          // An unreadable registry is reported where it is used; the next poll tries again.
        } finally {
          polling = false;
        }
      };
      void poll();
      const timer = setInterval(() => void poll(), this.options.lifecyclePollMs ?? 1_000);
      timer.unref();
      return () => {
        clearInterval(timer);
        signals.unsubscribe();
      };
    }).pipe(share());
  }

  /** Whether the registry lists `domain` (dom0 is never a QEMU domain). Reads the file each time. */
  manages(domain: DomainName): boolean {
    return Object.hasOwn(this.registry().domains, domain);
  }

  /** The registry's domains, without dom0. */
  domains(): readonly DomainName[] {
    return Object.keys(this.registry().domains);
  }

  /**
   * True while the domain's QEMU process exists and its machine has not shut down. A paused or
   * not-yet-started (`-S`, prelaunch) machine counts as running: the frontend exists and accepts
   * device_add. dom0 is always running. Unknown domains are DG_NO_SUCH_DOMAIN.
   */
  async isRunning(domain: DomainName): Promise<boolean> {
    try {
      if (await this.isDom0(domain)) return true;
      // A known pid answers at once, even before the dead process's socket is seen closing.
      const entry = getDomain(this.registry(), domain, this.registryFile);
      if (entry.pid !== undefined && !isQemuAlive(entry.pid, entry.qmp)) return false;
      // On an open connection the answer is known without a round trip: the machine is there
      // until QEMU reports SHUTDOWN (or the connection closes, which drops the cached state).
      const client = await this.client(domain);
      let shutDown = this.shutDown.get(client);
      if (shutDown === undefined) {
        const status = await client.execute<QemuStatus>('query-status');
        shutDown = NOT_RUNNING_STATES.has(status.status);
        this.shutDown.set(client, shutDown);
        client.events$.subscribe((event) => {
          if (event.event === 'SHUTDOWN') this.shutDown.set(client, true);
          if (event.event === 'RESET' || event.event === 'RESUME') this.shutDown.set(client, false);
        });
      }
      return !shutDown;
    } catch (error) {
      if (errorCode(error) === Errors.domainNotRunning.code) return false;
      throw error;
    }
  }

  /** `query-status`; dom0 reports itself as running. */
  async queryStatus(domain: DomainName): Promise<QemuStatus> {
    if (await this.isDom0(domain)) return { status: 'running', running: true };
    return this.execute<QemuStatus>(domain, 'query-status');
  }

  queryBlock(domain: DomainName): Promise<QemuBlockInfo[]> {
    return this.execute<QemuBlockInfo[]>(domain, 'query-block');
  }

  queryPci(domain: DomainName): Promise<QemuPciBus[]> {
    return this.execute<QemuPciBus[]>(domain, 'query-pci');
  }

  /**
   * Any QMP command on a domain. DG_DOMAIN_NOT_RUNNING when nothing answers on its socket;
   * QMP errors come through as DG_QMP_COMMAND_FAILED.
   */
  /**
   * Gives the events to the domain's active emulated input devices (`input-send-event`). QEMU takes
   * none while the VM is paused: DG_DOMAIN_NOT_RUNNING then.
   */
  async injectInput(domain: DomainName, events: readonly InjectedInputEvent[]): Promise<void> {
    if (events.length === 0) return;
    try {
      await this.execute(domain, 'input-send-event', { events: inputSendEventArgs(events) });
    } catch (error) {
      const status = await this.execute<{ running: boolean }>(domain, 'query-status').catch(() => undefined);
      if (status?.running === false) throw Errors.domainNotRunning({ domain, role: 'frontend' });
      throw error;
    }
  }

  async execute<T = unknown>(
    domain: DomainName,
    command: string,
    args?: Readonly<Record<string, unknown>>,
  ): Promise<T> {
    const client = await this.client(domain);
    try {
      return await client.execute<T>(command, args);
    } catch (error) {
      // QEMU went away between connecting and answering (killed, or `quit`).
      if (errorCode(error) === Errors.qmpDisconnected.code) {
        throw Errors.domainNotRunning({ domain, role: 'frontend' });
      }
      throw error;
    }
  }

  /**
   * Attaches a block device (usb-storage by default, virtio-blk or a USB CD when asked), or passes a
   * host USB device through (`usb-host`).
   */
  async attach(frontend: DomainName, port: Port, spec: AttachSpec, deviceId: string): Promise<HypervisorAttachment> {
    if (spec.kind === 'usb-host') return this.attachUsbHost(frontend, port, spec, deviceId);
    if (spec.kind === INPUT_LINUX_KIND) return attachInputLinux(this, frontend, port, spec, deviceId);
    if (spec.kind === 'usb-redir') return this.attachUsbRedir(frontend, port, spec, deviceId);
    if (spec.kind === 'vfio-pci') return this.attachVfio(frontend, port, spec, deviceId);
    if (spec.kind === QEMU_DEVICE_KIND) return this.attachGeneric(frontend, port, spec, deviceId);
    if (spec.kind !== 'block') throw Errors.unsupported({ driverId: this.id, operation: `attach (${spec.kind})` });
    const existing = await this.devgateDevices(frontend);
    const used = new Set(existing.map(([, record]) => record.o['frontend-dev']).filter(Boolean));
    const frontendDev = chooseFrontendDev(frontend, spec, used);
    const rootPort = spec.params.bus === 'virtio' ? await this.freeRootPort(frontend) : undefined;
    const plan = planBlockAttach(port, spec, deviceId, frontendDev, rootPort);
    let nodeAdded = false;
    await this.addDevice(
      frontend,
      plan.qdevId,
      async (added) => {
        // The block node is added as part of the attach, so a reading meanwhile (dropOrphans) keeps it.
        await this.execute(frontend, 'blockdev-add', plan.blockdev);
        nodeAdded = true;
        for (const device of plan.devices) {
          await this.execute(frontend, 'device_add', device);
          added.push(String(device.id));
        }
      },
      async (present) => {
        // Unplug what was added (a CD's transport), then drop the block node.
        const transport = String(plan.devices[0]!.id);
        if (present.has(transport)) await this.unplug(frontend, transport).catch(() => undefined);
        // Only a node this attach added: one of that name already there is not its to remove.
        if (nodeAdded) {
          await this.execute(frontend, 'blockdev-del', { 'node-name': plan.nodeName }).catch(() => undefined);
        }
      },
    );
    return { port, frontend, deviceId, options: plan.options };
  }

  /**
   * Runs an attach's commands (`add`, ending in the device_add of `qdevId`; it lists in `added` the
   * devices it added) and notes the device in the domain's known list. When a command fails, `undo`
   * leaves the VM as it was, given the ids present. A device_add devgate stopped waiting for may still
   * go through in QEMU, so after a timeout what QEMU lists decides: a VM that holds the device has it
   * attached, never free (a second VM could be given it).
   */
  private async addDevice(
    frontend: DomainName,
    qdevId: string,
    add: (added: string[]) => Promise<unknown>,
    undo: (present: ReadonlySet<string>) => Promise<unknown> = async () => undefined,
  ): Promise<void> {
    // Read the domain's devices first, so the one added below is known when it comes back. That
    // reading removes what an earlier attach of this id left (dropOrphans); from then on, until the
    // device is in, what this attach adds is kept by any reading (`adding`): all of it is in `add`.
    await this.devgateDevices(frontend);
    const added: string[] = [];
    this.adding.add(qdevId);
    try {
      await add(added);
    } catch (error) {
      const present = errorCode(error) === Errors.qmpTimeout.code ? await this.peripheralIds(frontend) : new Set(added);
      // It went in, late: the VM holds the device, so it is attached (and listed).
      if (present?.has(qdevId)) return this.noteDevice(frontend, qdevId, decodeQdevId(qdevId));
      if (!present) {
        // QEMU still does not answer: the next reading asks it again, after the device_add, rather
        // than trust a list that may lack the device. Nothing is undone: the device may be in use.
        // What it leaves, if the device_add failed, goes then (dropOrphans).
        await this.forgetDevices(frontend);
        throw error;
      }
      await undo(present);
      // A command that timed out went through unknown to undo: the next reading removes what it left.
      if (errorCode(error) === Errors.qmpTimeout.code) await this.forgetDevices(frontend);
      throw error;
    } finally {
      this.adding.delete(qdevId);
    }
    await this.noteDevice(frontend, qdevId, decodeQdevId(qdevId));
  }

  /**
   * The ids of the domain's devices as QEMU lists them now, or undefined when it does not answer.
   * QEMU runs commands in order, so the answer comes after any command still running.
   */
  private async peripheralIds(domain: DomainName): Promise<Set<string> | undefined> {
    const children = await this.execute<{ name: string }[]>(domain, 'qom-list', { path: '/machine/peripheral' }).catch(
      () => undefined,
    );
    return children && new Set(children.map((child) => child.name));
  }

  /** `device_add usb-host` on the xHCI controller; QEMU accepts it even before the device is there. */
  private async attachUsbHost(
    frontend: DomainName,
    port: Port,
    spec: AttachSpec,
    deviceId: string,
  ): Promise<HypervisorAttachment> {
    const plan = planUsbHostAttach(port, spec, deviceId);
    await this.addDevice(frontend, plan.qdevId, () => this.execute(frontend, 'device_add', plan.device));
    return { port, frontend, deviceId, options: plan.options };
  }

  /** `device_add vfio-pci` on a free PCIe root port (see vfio-attach.ts). */
  private async attachVfio(
    frontend: DomainName,
    port: Port,
    spec: AttachSpec,
    deviceId: string,
  ): Promise<HypervisorAttachment> {
    const plan = planVfioAttach(port, spec, deviceId, await this.freeRootPort(frontend));
    await this.addDevice(frontend, plan.qdevId, () => this.execute(frontend, 'device_add', plan.device));
    return { port, frontend, deviceId, options: plan.options };
  }

  /** The generic kind (qemu-generic.ts): a named QEMU device after its chardev, block node or object. */
  private async attachGeneric(
    frontend: DomainName,
    port: Port,
    spec: AttachSpec,
    deviceId: string,
  ): Promise<HypervisorAttachment> {
    const plan = planQemuDevice(port, spec, deviceId);
    const { add, undo } = qemuDeviceSteps(this, frontend, plan);
    await this.addDevice(frontend, plan.qdevId, add, undo);
    return { port, frontend, deviceId, options: plan.options };
  }

  /** A backend VM's USB device: `chardev-add` to its export port, then `device_add usb-redir`. */
  private async attachUsbRedir(
    frontend: DomainName,
    port: Port,
    spec: AttachSpec,
    deviceId: string,
  ): Promise<HypervisorAttachment> {
    const plan = planUsbRedirAttach(port, spec, deviceId);
    let chardevAdded = false;
    await this.addDevice(
      frontend,
      plan.qdevId,
      async () => {
        await this.execute(frontend, 'chardev-add', plan.chardev);
        chardevAdded = true;
        await this.execute(frontend, 'device_add', plan.device);
      },
      async () => {
        if (chardevAdded) await this.execute(frontend, 'chardev-remove', { id: plan.qdevId }).catch(() => undefined);
      },
    );
    return { port, frontend, deviceId, options: plan.options };
  }

  /** device_del, wait for QEMU's DEVICE_DELETED (bounded), then blockdev-del for block devices. */
  async detach(frontend: DomainName, port: Port): Promise<void> {
    const found = (await this.devgateDevices(frontend)).find(
      ([, r]) => r.c === port.devclass && r.b === port.backend && r.p === port.portId,
    );
    if (!found) {
      // An input device is input-linux objects, not a device (qemu-input.ts).
      if (await detachInputLinux(this, frontend, port)) return;
      throw Errors.notAttached({ device: `${port.backend}:${port.portId}`, frontend });
    }
    const [qdevId, record] = found;
    const frontendDev = record.o['frontend-dev'];
    // A backend VM's export (an NBD node): its connection is cut first (QMP yank), so nothing in flight
    // to a USB VM that stopped answering (its stick pulled out, or hostile) can hold up the unplug.
    if (frontendDev && record.b !== this.registry().dom0) {
      await this.execute(frontend, 'yank', {
        instances: [{ type: 'block-node', 'node-name': `dg-${frontendDev}` }],
      }).catch(() => undefined);
    }
    await this.unplug(
      frontend,
      record.o.devtype === 'cdrom' && frontendDev ? cdTransportId(frontendDev) : qdevId,
      record.c === 'pci' ? Math.max(this.options.unplugTimeoutMs ?? 0, PCI_UNPLUG_TIMEOUT_MS) : undefined,
    );
    await this.noteDevice(frontend, qdevId);
    await removeGenericBackends(this, frontend, qdevId, record);
    if (frontendDev) await this.execute(frontend, 'blockdev-del', { 'node-name': `dg-${frontendDev}` });
    // A usb-redir device's chardev has its id (usb-host has none: nothing to remove).
    if (record.c === 'usb') await this.execute(frontend, 'chardev-remove', { id: qdevId }).catch(() => undefined);
  }

  /** Every devgate attachment in every running domain, decoded from the qdev ids. */
  async attachments(): Promise<readonly HypervisorAttachment[]> {
    const result: HypervisorAttachment[] = [];
    for (const domain of this.domains()) {
      if (!(await this.isRunning(domain).catch(() => false))) continue;
      const devices = await this.devgateDevices(domain).catch(() => []);
      for (const [, record] of devices) result.push(toHypervisorAttachment(domain, record));
      result.push(...(await inputLinuxAttachments(this, domain).catch(() => [])));
    }
    return result;
  }

  private async unplug(frontend: DomainName, qdevId: string, timeout?: number): Promise<void> {
    const client = await this.client(frontend);
    const timeoutMs = timeout ?? this.options.unplugTimeoutMs ?? 5_000;
    // Listen before asking, so a fast DEVICE_DELETED is not missed.
    const deleted = client.waitForEvent(
      'DEVICE_DELETED',
      (event) => (event.data as { device?: string } | undefined)?.device === qdevId,
      timeoutMs,
    );
    deleted.catch(() => undefined);
    this.unplugging.add(qdevId);
    try {
      await this.execute(frontend, 'device_del', { id: qdevId });
      await deleted;
    } catch (error) {
      if (errorCode(error) === Errors.qmpTimeout.code)
        throw Errors.detachTimeout({ domain: frontend, device: qdevId, timeoutMs });
      // QEMU went away while the guest was letting go (the wait sees the socket close, as execute does).
      if (errorCode(error) === Errors.qmpDisconnected.code) {
        throw Errors.domainNotRunning({ domain: frontend, role: 'frontend' });
      }
      throw error;
    } finally {
      this.unplugging.delete(qdevId);
    }
  }

  /**
   * devgate's devices in a domain, decoded from `qom-list /machine/peripheral`. While devgate holds
   * the domain's only QMP connection nobody else can add devices, so the list is kept per
   * connection and updated by devgate's own changes and by QEMU's DEVICE_DELETED events.
   */
  private async devgateDevices(domain: DomainName): Promise<[string, AttachmentRecord][]> {
    const client = await this.client(domain);
    let known = this.peripherals.get(client)?.devices;
    if (!known) {
      const children = await this.execute<{ name: string; type: string }[]>(domain, 'qom-list', {
        path: '/machine/peripheral',
      });
      const found = new Map<string, AttachmentRecord>();
      for (const child of children) {
        const record = decodeQdevId(child.name);
        if (record) found.set(child.name, record);
      }
      known = found;
      // The subscription lives with the list, and goes when the list is dropped (dropDevices): a
      // list read again after each timed-out attach would otherwise add one that never ends.
      // A concurrent first reading's list is replaced, its subscription with it.
      this.dropDevices(client);
      const events = client.events$.subscribe({
        next: (event) => {
          if (event.event === 'DEVICE_DELETED') found.delete((event.data as { device?: string }).device ?? '');
        },
        complete: () => this.dropDevices(client),
      });
      // A connection that closed meanwhile keeps no list: the next reading is on a new one.
      if (!events.closed) this.peripherals.set(client, { devices: found, events });
      await this.dropOrphans(domain, found);
    }
    return [...known];
  }

  /**
   * What devgate added for a device that is not in the VM: block nodes, and the chardevs and objects
   * of usb-redir and generic devices. Left by a devgate killed between adding them and device_add, or
   * between device_del and removing them, or by a device_add that failed after devgate stopped waiting.
   * They would hold the host device open and make the next attach under that id fail, so they go as
   * soon as devgate reads the domain. Only ids devgate makes are touched (a chardev or object has its
   * device's id), and none of a device being added.
   */
  private async dropOrphans(domain: DomainName, devices: ReadonlyMap<string, AttachmentRecord>): Promise<void> {
    const kept = new Set([...devices.keys(), ...this.adding]);
    const used = new Set<string>();
    // A block attach in progress has its node before its device: kept by its id's frontend name.
    for (const id of kept) {
      const frontendDev = (devices.get(id) ?? decodeQdevId(id))?.o['frontend-dev'];
      if (frontendDev) used.add(`dg-${frontendDev}`);
      used.add(genericNodeName(id));
    }
    // Asked together (QMP answers in order, the client sends without waiting): one round trip at a
    // domain's first reading, as before the chardevs and objects were asked too.
    const [nodes, chardevs, objects] = await Promise.all([
      this.execute<{ 'node-name'?: string }[]>(domain, 'query-named-block-nodes', { flat: true }),
      this.execute<{ label: string }[]>(domain, 'query-chardev'),
      this.execute<{ name: string }[]>(domain, 'qom-list', { path: '/objects' }),
    ]);
    for (const node of nodes) {
      const name = node['node-name'];
      if (name && (name.startsWith('dg-') || isGenericNodeName(name)) && !used.has(name)) {
        await this.execute(domain, 'blockdev-del', { 'node-name': name }).catch(() => undefined);
      }
    }
    const orphan = (id: string) => decodeQdevId(id) !== undefined && !kept.has(id);
    for (const { label } of chardevs) {
      if (orphan(label)) await this.execute(domain, 'chardev-remove', { id: label }).catch(() => undefined);
    }
    // input-linux objects are attachments of their own, not a device's: their ids are not qdev ids.
    for (const { name } of objects) {
      if (orphan(name)) await this.execute(domain, 'object-del', { id: name }).catch(() => undefined);
    }
  }

  /** Drops the domain's known list: the next reading asks QEMU. */
  private async forgetDevices(domain: DomainName): Promise<void> {
    const client = await this.client(domain).catch(() => undefined);
    if (client) this.dropDevices(client);
  }

  /** Drops a connection's known list and ends the subscription that kept it up to date. */
  private dropDevices(client: QmpClient): void {
    this.peripherals.get(client)?.events.unsubscribe();
    this.peripherals.delete(client);
  }

  /** Records (or forgets) a device in the domain's known list after devgate changed it. */
  private async noteDevice(domain: DomainName, qdevId: string, record?: AttachmentRecord): Promise<void> {
    const known = this.peripherals.get(await this.client(domain))?.devices;
    if (!known) return;
    if (record) known.set(qdevId, record);
    else known.delete(qdevId);
  }

  /**
   * A PCIe root port with nothing plugged in, for virtio-blk and vfio-pci. query-pci cannot see behind bridges of
   * a machine whose firmware has not run (`-S`), so occupancy comes from each device's parent bus.
   */
  private async freeRootPort(domain: DomainName): Promise<string | undefined> {
    const children = await this.execute<{ name: string; type: string }[]>(domain, 'qom-list', {
      path: '/machine/peripheral',
    });
    const rootPorts = children.filter((c) => c.type === 'child<pcie-root-port>').map((c) => c.name);
    const used = new Set<string>();
    for (const child of children) {
      if (!child.type.startsWith('child<virtio-') && child.type !== 'child<vfio-pci>') continue;
      const bus = await this.execute<string>(domain, 'qom-get', {
        path: `/machine/peripheral/${child.name}`,
        property: 'parent_bus',
      });
      used.add(bus.split('/').at(-1) ?? '');
    }
    return rootPorts.sort().find((name) => !used.has(name));
  }

  /** Turns what QEMU says on a connection into lifecycle signals for `domain`. */
  private watchLifecycle(domain: DomainName, client: QmpClient): void {
    client.events$.subscribe({
      next: (event) => {
        if (event.event === 'SHUTDOWN') this.signals.next({ type: 'stopped', domain });
        else if (event.event === 'STOP') this.signals.next({ type: 'paused', domain });
        else if (event.event === 'RESUME') this.signals.next({ type: 'resumed', domain });
        else if (event.event === 'DEVICE_DELETED') {
          const id = (event.data as { device?: unknown } | undefined)?.device;
          const record = typeof id === 'string' && !this.unplugging.has(id) ? decodeQdevId(id) : undefined;
          if (record)
            this.signals.next({ type: 'device-removed', domain, port: toHypervisorAttachment(domain, record).port });
        }
      },
      // A closed socket: QEMU quit or was killed, unless a new connection says otherwise.
      complete: () => {
        if (this.disposed) return;
        void this.isRunning(domain)
          .catch(() => false)
          .then((running) => {
            if (!running) this.signals.next({ type: 'stopped', domain });
          });
      },
    });
  }

  dispose(): void {
    this.disposed = true;
    this.signals.complete();
    for (const pending of this.clients.values())
      pending.then(
        (c) => c.destroy(),
        () => {},
      );
    this.clients.clear();
  }

  /**
   * The registry, re-read only when the file changed: `lab up` and `lab down` are seen at once, and
   * an attach does not parse the file for each of its QMP commands.
   */
  private registry(): DomainRegistryData {
    const stat = fs.statSync(this.registryFile, { throwIfNoEntry: false });
    // ctime too: a chmod or chown alone decides whether a checking reader accepts the file.
    const version = stat ? `${stat.mtimeMs}:${stat.ctimeMs}:${stat.size}:${stat.ino}` : 'missing';
    if (this.cachedRegistry?.version !== version) {
      const read = this.options.registryReader ?? readRegistrySync;
      try {
        this.cachedRegistry = { version, data: read(this.registryFile) };
      } catch (error) {
        // Refused: what was read before stays, as in devgated's registry watch, and is not re-read
        // until the file changes. With nothing read before, the refusal is the answer.
        if (errorCode(error) !== Errors.configInvalid.code || !this.cachedRegistry) throw error;
        this.cachedRegistry = { version, data: this.cachedRegistry.data };
      }
    }
    return this.cachedRegistry.data;
  }

  private async isDom0(domain: DomainName): Promise<boolean> {
    return this.registry().dom0 === domain;
  }

  /** The open connection to the domain's socket, opening one if needed. */
  private async client(domain: DomainName): Promise<QmpClient> {
    if (this.disposed) throw Errors.qmpDisconnected({ socket: domain, reason: 'the connector is disposed' });
    const registry = this.registry();
    if (registry.dom0 === domain) throw Errors.unsupported({ driverId: this.id, operation: 'QMP on dom0' });
    const socket = getDomain(registry, domain, this.registryFile).qmp;

    const cached = this.clients.get(socket);
    if (cached) {
      const client = await cached.catch(() => undefined);
      if (client?.connected) return client;
      if (this.clients.get(socket) === cached) this.clients.delete(socket);
    }
    const opening = QmpClient.connect(socket, this.options);
    this.clients.set(socket, opening);
    try {
      const client = await opening;
      this.watchLifecycle(domain, client);
      return client;
    } catch (error) {
      if (this.clients.get(socket) === opening) this.clients.delete(socket);
      // Nothing listens: the socket is gone or stale, so QEMU is not running.
      if (errorCode(error) === Errors.qmpUnreachable.code) {
        throw Errors.domainNotRunning({ domain, role: 'frontend' });
      }
      throw error;
    }
  }
}
