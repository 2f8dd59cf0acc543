import EventEmitter from 'eventemitter3';
import {
  BehaviorSubject,
  type Observable,
  Subject,
  type Subscription,
  EMPTY,
  catchError,
  combineLatest,
  defer,
  map,
  retry,
  timer,
} from 'rxjs';
import {
  type Attachment,
  type DeviceClassId,
  type DeviceInfo,
  type DomainName,
  type Port,
  portKey,
  portLabel,
} from './device-model.js';
import { invalidDevicesError, snapshotChecker } from './device-check.js';
import { type AttachmentEndReason, type DeviceEvent, snapshotsToEvents } from './events.js';
import {
  type AttachRequest,
  type AttachSpec,
  type Connector,
  type DeviceClassDriver,
  type DeviceSource,
  type DomainLifecycleEvent,
  type InjectedInputEvent,
  type Logger,
  type PolicyHook,
  type PolicyVerdict,
  type RawInputEvent,
} from './plugin-api.js';
import { Disposable } from './disposable.js';
import { DriverContractError, Errors, errorCode } from './errors.js';
import { sanitizeText } from './sanitize.js';

export interface ListFilter {
  readonly devclass?: DeviceClassId;
  readonly backend?: DomainName;
  /** Also list devices hidden because they are in use in their backend. */
  readonly includeHidden?: boolean;
}

export interface AttachRequestInput {
  readonly frontend: DomainName;
  readonly port: Port;
  /** When given, the device in the port must be this one (Qubes' `BACKEND:PORT:DEVICE_ID`). */
  readonly deviceId?: string;
  readonly options?: Readonly<Record<string, string>>;
  readonly requestedBy?: string;
}

type EventMap = { [T in DeviceEvent['type']]: (event: Extract<DeviceEvent, { type: T }>) => void };

export interface DriverFault {
  readonly driverId: string;
  readonly sourceId: string;
  readonly error: Error;
}

interface LiveAttachment extends Attachment {
  readonly port: Port;
  readonly deviceId?: string;
  /** The device's own key and its ancestors' (partition, disk, USB device): its resource chain. */
  readonly chain: readonly string[];
  readonly connector: Connector;
}

/**
 * The kernel's live view of every backend's devices, and the owner of every invariant of attach and
 * detach. Listing is synchronous, from a cache that the drivers' discovery streams keep fresh; one
 * driver failing never silences the others. What is attached comes from the hypervisors.
 */
export class DeviceManager extends EventEmitter<EventMap> implements Disposable {
  private readonly cache = new Map<string, DeviceInfo>();
  private readonly eventsSubject = new Subject<DeviceEvent>();
  private readonly subscriptions: Subscription[] = [];
  private readonly lastFaults = new Map<string, DriverFault>();
  private readonly attachments = new Map<string, LiveAttachment>();
  private readonly attachmentsChanged = new BehaviorSubject<void>(undefined);
  /** Resource chains with an attach or detach in flight: what makes concurrent attaches safe. */
  private readonly inFlight = new Set<readonly string[]>();
  readonly events$: Observable<DeviceEvent> = this.eventsSubject.asObservable();
  /** The backends' sources: those given at construction, and those added while running. */
  private readonly backends: DeviceSource[];
  private started = false;

  constructor(
    readonly drivers: readonly DeviceClassDriver[],
    sources: readonly DeviceSource[],
    readonly policyHooks: readonly PolicyHook[] = [],
    readonly connectors: readonly Connector[] = [],
    /** Where what fails without failing an operation goes (a hook after an attach). */
    private readonly log?: Logger,
    private readonly faultRetryMs = 1000,
  ) {
    super();
    this.backends = [...sources];
  }

  get sources(): readonly DeviceSource[] {
    return this.backends;
  }

  /** Subscribes every driver to every source; sources that replay fill the cache synchronously. */
  start(): void {
    this.started = true;
    for (const source of this.backends) this.subscriptions.push(...this.watchSource(source));
    for (const connector of this.connectors) {
      const lifecycle = connector.lifecycle$?.subscribe((event) => this.onLifecycle(connector, event));
      if (lifecycle) this.subscriptions.push(lifecycle);
    }
  }

  /**
   * A backend that appears while devgate runs (a USB VM created, a recorded host brought up).
   * Disposing it withdraws the backend: its devices go as if pulled out, so whatever of it was
   * attached is detached, and the end published.
   */
  addSource(source: DeviceSource): Disposable {
    if (this.backends.some((s) => s.backend === source.backend))
      throw Errors.backendExists({ backend: source.backend });
    this.backends.push(source);
    const watching = this.started ? this.watchSource(source) : [];
    this.subscriptions.push(...watching);
    return Disposable.create(() => {
      for (const subscription of watching) {
        subscription.unsubscribe();
        this.subscriptions.splice(this.subscriptions.indexOf(subscription), 1);
      }
      this.backends.splice(this.backends.indexOf(source), 1);
      for (const device of [...this.cache.values()]) {
        if (device.port.backend === source.backend) this.apply({ type: 'removed', device });
      }
    });
  }

  private watchSource(source: DeviceSource): Subscription[] {
    return this.drivers.map((driver) => this.watch(driver, source));
  }

  /**
   * A frontend that stopped (or lost a device behind devgate's back) ends those attachments, as a
   * surprise removal does: the device is free at once, and the end is published for the audit. A
   * device attached behind devgate's back is held by that frontend from then on.
   */
  private onLifecycle(connector: Connector, event: DomainLifecycleEvent): void {
    if (event.type === 'device-added') {
      // Attached behind devgate's back: shown as held there, so nothing else gets it meanwhile.
      const key = portKey(event.attachment.port);
      const device = this.cache.get(key);
      if (!device || this.attachments.has(key)) return;
      const chain = this.chainOf(device);
      for (const busy of this.inFlight) if (overlaps(chain, busy)) return;
      this.attachments.set(key, { ...event.attachment, chain, connector });
      this.attachmentsChanged.next(); // which publishes it as attached
      return;
    }
    if (event.type === 'device-removed') {
      const live = this.attachments.get(portKey(event.port));
      if (live?.connector === connector && live.frontend === event.domain) this.end(live, 'removed-by-frontend');
      return;
    }
    if (event.type === 'stopped' || event.type === 'undefined') {
      for (const live of [...this.attachments.values()]) {
        if (live.connector === connector && live.frontend === event.domain) this.end(live, 'frontend-stopped');
      }
    }
    this.publish({ type: 'domain', domain: event.domain, state: event.type });
  }

  /** Forgets an attachment the hypervisor no longer has, and says so. */
  private end(live: LiveAttachment, reason: AttachmentEndReason, error?: Error): void {
    if (this.attachments.get(portKey(live.port)) === live) {
      this.attachments.delete(portKey(live.port));
      this.attachmentsChanged.next();
    }
    this.publish({
      type: 'attachment-ended',
      port: live.port,
      deviceId: live.deviceId,
      frontend: live.frontend,
      reason,
      outcome: error ? 'error' : 'ok',
      ...(error ? { error } : {}),
    });
  }

  private watch(driver: DeviceClassDriver, source: DeviceSource): Subscription {
    const pairKey = `${driver.id}@${source.id}`;
    const fault = (error: Error) => {
      const driverFault = { driverId: driver.id, sourceId: source.id, error };
      this.lastFaults.set(pairKey, driverFault);
      this.publish({ type: 'driver-fault', ...driverFault });
    };
    const portKeys = new WeakMap<DeviceInfo, string>();
    const check = snapshotChecker(driver.id, source.backend, portKeys);
    // Checked once per snapshot the driver emits, not again for each change of attachments.
    const snapshots = defer(() => driver.discover(source)).pipe(
      map((snapshot) => {
        const { devices, problems } = check(snapshot);
        if (problems.length === 0) {
          // A good snapshot after a fault: the driver works again.
          this.lastFaults.delete(pairKey);
          return devices;
        }
        // Its good devices stay listed; the fault is published when what is wrong changes, not each pass.
        const error = invalidDevicesError(driver.id, source.backend, problems);
        if (this.lastFaults.get(pairKey)?.error.message !== error.message) fault(error);
        return devices;
      }),
    );
    const isolated = combineLatest([snapshots, this.attachmentsChanged]).pipe(
      map(([devices]) => devices.map((device) => this.withAttachment(device))),
      snapshotsToEvents(portKeys),
      catchError((error: unknown) => {
        fault(asError(error));
        throw error;
      }),
      // A faulted driver is retried with backoff; its last good devices stay listed meanwhile.
      retry({ delay: (_e, attempt) => timer(Math.min(this.faultRetryMs * 2 ** (attempt - 1), 60_000)) }),
      catchError(() => EMPTY),
    );
    return isolated.subscribe((event) => this.apply(event));
  }

  private withAttachment(device: DeviceInfo): DeviceInfo {
    const live = this.attachments.get(portKey(device.port));
    return live ? { ...device, attachment: { frontend: live.frontend, options: live.options } } : device;
  }

  private apply(event: DeviceEvent): void {
    if ('device' in event) {
      const key = portKey(event.device.port);
      if (event.type === 'removed') this.cache.delete(key);
      else this.cache.set(key, event.device);
    }
    this.publish(event);
    // Surprise removal: a device that vanished while attached is detached by the kernel itself.
    if (event.type === 'removed' && this.attachments.has(portKey(event.device.port))) {
      void this.reclaim(event.device.port);
    }
  }

  /** Detaches from the frontend a device that is gone from its backend; the outcome is published after. */
  private async reclaim(port: Port): Promise<void> {
    const live = this.attachments.get(portKey(port));
    if (!live) return;
    // Listed free at once (the device is gone whatever the hypervisor answers), but in flight until
    // the hypervisor let go: a re-inserted device is not attached over its own detach.
    this.attachments.delete(portKey(port));
    this.attachmentsChanged.next();
    const busy = [...live.chain]; // its own entry: a user's detach of it may be in flight too
    this.inFlight.add(busy);
    const error = await live.connector.detach(live.frontend, port).then(
      () => undefined,
      (e: unknown) => asError(e),
    );
    this.inFlight.delete(busy);
    this.end(live, 'device-removed', error);
  }

  private publish(event: DeviceEvent): void {
    this.eventsSubject.next(event);
    this.emit(event.type, event as never);
  }

  list(filter: ListFilter = {}): DeviceInfo[] {
    const result: DeviceInfo[] = [];
    for (const device of this.cache.values()) {
      if (filter.devclass !== undefined && device.port.devclass !== filter.devclass) continue;
      if (filter.backend !== undefined && device.port.backend !== filter.backend) continue;
      if (!filter.includeHidden && device.hiddenReason !== undefined && !device.attachment) continue;
      result.push(device);
    }
    return result;
  }

  get(port: Port): DeviceInfo | undefined {
    return this.cache.get(portKey(port));
  }

  /** Drivers whose discovery failed, or whose devices were left out as invalid, with the last error of each. */
  faults(): DriverFault[] {
    return [...this.lastFaults.values()];
  }

  /**
   * The events of an input device's event nodes, from its backend (Qubes' input proxy): see
   * `DeviceSource.inputEvents`. DG_NO_INPUT_PATH when its backend cannot send them.
   */
  inputEvents(device: DeviceInfo, nodes: readonly string[]): Observable<readonly RawInputEvent[]> {
    const source = this.sources.find((s) => s.backend === device.port.backend);
    if (!source?.inputEvents) {
      throw Errors.noInputPath({
        device: portLabel(device.port),
        reason: `${device.port.backend} is read from ${source?.id ?? 'nothing'}, which does not send input events`,
      });
    }
    return source.inputEvents(device, nodes);
  }

  /** Gives input events to a domain's emulated input devices, through the connector that manages it. */
  async injectInput(domain: DomainName, events: readonly InjectedInputEvent[]): Promise<void> {
    const connector = this.connectors.find((c) => c.manages(domain));
    if (!connector) throw Errors.noConnector({ domain });
    if (!connector.injectInput) {
      throw Errors.noInputPath({ device: domain, reason: `${connector.id} cannot give input events to its domains` });
    }
    await connector.injectInput(domain, events);
  }

  /** Every domain a connector manages, plus the backends. */
  domains(): DomainName[] {
    const names = new Set<DomainName>(this.sources.map((s) => s.backend));
    for (const connector of this.connectors) for (const domain of connector.domains()) names.add(domain);
    return [...names];
  }

  /**
   * Reads what is attached back from every hypervisor, and detaches what no longer has a device
   * behind it. Run at start: after a restart nothing is stale and nothing is forgotten.
   *
   * Gone means gone from a complete reading: a backend `complete` says was read whole (default:
   * every source's), in a class whose driver is loaded. Elsewhere (a recording or a `--sysroot` tree
   * read instead of the host, a USB VM whose agent has not answered yet) an attachment is not known
   * to be stale: nothing is detached; one whose device is not listed holds its port, one whose port
   * lists another device is left out. `backend` reads back the attachments of that backend only (a
   * USB VM whose agent answered late), leaving the others as they are.
   */
  async syncAttachments({
    complete,
    backend,
  }: { readonly complete?: (backend: DomainName) => boolean; readonly backend?: DomainName } = {}): Promise<void> {
    const readWhole = (port: Port) =>
      (complete ? complete(port.backend) : this.backends.some((s) => s.backend === port.backend)) &&
      this.drivers.some((d) => d.id === port.devclass);
    for (const connector of this.connectors) {
      const ours = (port: Port) => backend === undefined || port.backend === backend;
      const reported = (await connector.attachments()).filter((attachment) => ours(attachment.port));
      for (const [key, live] of this.attachments)
        if (live.connector === connector && ours(live.port)) this.attachments.delete(key);
      for (const attachment of reported) {
        const device = this.get(attachment.port);
        const replaced = device && attachment.deviceId !== undefined && attachment.deviceId !== device.deviceId;
        if (!readWhole(attachment.port)) {
          const chain = device ? this.chainOf(device) : [portKey(attachment.port)];
          if (!replaced) this.attachments.set(portKey(attachment.port), { ...attachment, chain, connector });
          continue;
        }
        if (!device || replaced) {
          // Attached, but its device is gone from the backend, or another device sits in its port
          // now: undo it rather than show it stale, or show the new device as attached.
          const live = { ...attachment, chain: [portKey(attachment.port)], connector };
          const error = await connector.detach(attachment.frontend, attachment.port).then(
            () => undefined,
            (e: unknown) => asError(e),
          );
          this.end(live, replaced ? 'device-replaced' : 'device-removed', error);
          continue;
        }
        this.attachments.set(portKey(attachment.port), { ...attachment, chain: this.chainOf(device), connector });
      }
    }
    this.attachmentsChanged.next();
  }

  /** Attaches a device to a frontend, checking every invariant first, in a fixed order. */
  async attach(request: AttachRequestInput): Promise<DeviceInfo> {
    const { frontend, port } = request;
    const label = portLabel(port);
    const driver = this.drivers.find((d) => d.id === port.devclass);
    if (!driver) throw Errors.unknownDeviceClass({ devclass: port.devclass, known: this.drivers.map((d) => d.id) });
    if (!driver.attachSpec) throw Errors.unsupported({ driverId: driver.id, operation: 'attach' });
    const source = this.sources.find((s) => s.backend === port.backend);
    if (!source) throw Errors.noSuchBackend({ backend: port.backend });
    const device = this.get(port);
    if (!device) throw Errors.unknownDevice({ backend: port.backend, devclass: port.devclass, port: port.portId });
    if (request.deviceId !== undefined && request.deviceId !== '*' && request.deviceId !== device.deviceId) {
      throw Errors.unrecognizedIdentity({ port: label, expected: request.deviceId, actual: device.deviceId });
    }
    const attached = this.attachments.get(portKey(port));
    if (attached) throw Errors.alreadyAttached({ device: label, frontend: attached.frontend });
    const chain = this.chainOf(device);
    for (const live of this.attachments.values()) {
      if (overlaps(chain, live.chain)) {
        throw Errors.overlap({ device: label, other: portLabel(live.port), frontend: live.frontend });
      }
    }
    if (device.hiddenReason) throw Errors.deviceInUse({ device: label, reason: device.hiddenReason });
    const busy = this.busyPartOf(device);
    if (busy) throw Errors.deviceInUse({ device: label, reason: `${portLabel(busy.port)} is ${busy.hiddenReason}` });
    if (!source.dataPath) {
      throw Errors.notAttachable({
        device: label,
        backend: port.backend,
        reason: `${port.backend} is read from ${source.id}, which has no data path to a VM`,
      });
    }
    for (const busy of this.inFlight) if (overlaps(chain, busy)) throw Errors.attachInProgress({ device: label });
    const connector = this.connectors.find((c) => c.manages(frontend));
    if (!connector) throw Errors.noConnector({ domain: frontend });
    // Everything above ran synchronously: of two concurrent attaches, exactly one gets here.
    this.inFlight.add(chain);
    try {
      const spec = this.specOf(driver, device, request.options ?? {});
      // The kind the connector will be handed, after this backend's data path: refused here, before
      // anything (hook, backend, hypervisor) is touched, when the connector cannot perform it.
      const kind = source.routesKind ? source.routesKind(spec.kind) : spec.kind;
      if (kind === undefined || (connector.attachKinds !== undefined && !connector.attachKinds.includes(kind))) {
        throw Errors.unsupportedAttachKind({
          device: label,
          kind: kind ?? spec.kind,
          frontend,
          connector: kind === undefined ? `backend ${port.backend}` : connector.id,
          kinds: kind === undefined ? [] : connector.attachKinds!,
        });
      }
      if (!(await connector.isRunning(frontend))) throw Errors.domainNotRunning({ domain: frontend, role: 'frontend' });
      for (const hook of this.policyHooks) {
        let verdict: PolicyVerdict | undefined;
        try {
          verdict = await hook.preAttach?.({
            device,
            frontend,
            options: spec.options,
            requestedBy: request.requestedBy ?? 'unknown',
          });
        } catch (error) {
          throw contractFailure(hook.id, `preAttach failed for ${label}`, error);
        }
        if (verdict && verdict.verdict !== 'allow') {
          throw Errors.policyDenied({
            device: label,
            frontend,
            reason: verdict.reason ?? (verdict.verdict === 'ask' ? 'it needs an answer, and nobody can ask' : hook.id),
          });
        }
      }
      // The backend checks that the device there now is the one listed, and says how it gets there.
      const routed = await source.dataPath(device, spec);
      if (this.get(port)?.deviceId !== device.deviceId) throw Errors.deviceGone({ device: label });
      const result = await connector.attach(frontend, port, routed, device.deviceId);
      if (this.get(port)?.deviceId !== device.deviceId) {
        // Pulled (or swapped) while we were attaching: do not leave the VM holding the wrong device.
        await connector.detach(frontend, port).catch(() => undefined);
        throw Errors.deviceGone({ device: label });
      }
      this.attachments.set(portKey(port), { ...result, deviceId: device.deviceId, chain, connector });
      this.attachmentsChanged.next();
      for (const hook of this.policyHooks)
        this.notifyAttached(hook, {
          device,
          frontend,
          options: spec.options,
          requestedBy: request.requestedBy ?? 'unknown',
        });
      return this.get(port)!;
    } finally {
      this.inFlight.delete(chain);
    }
  }

  /** The driver's attach spec. Its coded refusals (a bad option) pass as they are; anything else names the driver. */
  private specOf(driver: DeviceClassDriver, device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec {
    const label = portLabel(device.port);
    let spec: unknown;
    try {
      spec = driver.attachSpec!(device, options);
    } catch (error) {
      throw contractFailure(driver.id, `attachSpec failed for ${label}`, error);
    }
    if (!isAttachSpec(spec))
      throw new DriverContractError(driver.id, `attachSpec returned no attach spec for ${label}`);
    return spec;
  }

  /** `on*` hooks only observe: one that fails is logged, and the attach it saw stands. */
  private notifyAttached(hook: PolicyHook, request: AttachRequest): void {
    const failed = (thrown: unknown) => {
      const reason = sanitizeText(asError(thrown).message, 300) ?? asError(thrown).name;
      const error = new DriverContractError(hook.id, `onAttached failed: ${reason}`);
      this.log?.error('a policy hook failed after an attach, which stands', {
        code: error.code,
        hook: hook.id,
        device: portLabel(request.device.port),
        frontend: request.frontend,
        reason: error.reason,
      });
    };
    try {
      const result: unknown = hook.onAttached?.(request);
      // Typed void, but an async hook returns a promise: its rejection must not go unhandled.
      if (isThenable(result)) result.then(undefined, failed);
    } catch (error) {
      failed(error);
    }
  }

  /**
   * Detaches one device from a frontend, or with no port every device of that class attached to it.
   * Returns the ports detached.
   */
  async detach(frontend: DomainName, port?: Port, devclass?: DeviceClassId): Promise<Port[]> {
    const targets = port
      ? [this.attachments.get(portKey(port))].filter((live) => live !== undefined)
      : [...this.attachments.values()].filter(
          (live) => live.frontend === frontend && (devclass === undefined || live.port.devclass === devclass),
        );
    if (port && (targets.length === 0 || targets[0]!.frontend !== frontend)) {
      throw Errors.notAttached({ device: portLabel(port), frontend: port ? frontend : undefined });
    }
    const done: Port[] = [];
    for (const live of targets) {
      if ([...this.inFlight].some((busy) => overlaps(live.chain, busy))) {
        throw Errors.attachInProgress({ device: portLabel(live.port) });
      }
      const busy = [...live.chain]; // its own entry: a surprise removal may detach it meanwhile
      this.inFlight.add(busy);
      try {
        await live.connector.detach(live.frontend, live.port);
        this.attachments.delete(portKey(live.port));
        this.attachmentsChanged.next();
        done.push(live.port);
      } finally {
        this.inFlight.delete(busy);
      }
    }
    return done;
  }

  /**
   * A device inside this one (its partition, the disk of a USB stick) that its backend uses: handing
   * over the container would hand over what the backend has mounted or holds.
   */
  private busyPartOf(device: DeviceInfo): DeviceInfo | undefined {
    const key = portKey(device.port);
    let innermost: { device: DeviceInfo; depth: number } | undefined;
    for (const other of this.cache.values()) {
      if (!other.inUse || other === device) continue;
      const chain = this.chainOf(other);
      // The innermost one says why (a mounted partition, rather than its disk "with a busy partition").
      if (chain.includes(key) && chain.length > (innermost?.depth ?? 0))
        innermost = { device: other, depth: chain.length };
    }
    return innermost?.device;
  }

  /** The device's key and its ancestors', following `parent` links across classes: what it overlaps with. */
  chainOf(device: DeviceInfo): string[] {
    const chain = [portKey(device.port)];
    for (let parent = device.parent; parent && chain.length < 16; parent = this.get(parent)?.parent) {
      chain.push(portKey(parent));
    }
    return chain;
  }

  dispose(): void {
    for (const subscription of this.subscriptions.splice(0)) subscription.unsubscribe();
    this.eventsSubject.complete();
    this.removeAllListeners();
  }
}

/** Two resources overlap when one is the other or sits inside it. */
function overlaps(a: readonly string[], b: readonly string[]): boolean {
  return a.includes(b[0]) || b.includes(a[0]);
}

function isAttachSpec(spec: unknown): spec is AttachSpec {
  if (typeof spec !== 'object' || spec === null) return false;
  const { kind, params, options } = spec as Record<string, unknown>;
  return typeof kind === 'string' && kind !== '' && isRecord(params) && isRecord(options);
}

function isRecord(value: unknown): boolean {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | undefined)?.then === 'function';
}

/**
 * What a driver's or hook's code threw: its coded errors (a refusal) as they are, anything else a
 * contract failure that names it, with its message made plain text.
 */
function contractFailure(id: string, what: string, error: unknown): unknown {
  if (errorCode(error) !== 'DG_INTERNAL') return error;
  const reason = sanitizeText(asError(error).message, 300) ?? asError(error).name;
  return new DriverContractError(id, `${what}: ${reason}`);
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
