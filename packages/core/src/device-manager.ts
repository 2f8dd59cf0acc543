import EventEmitter from 'eventemitter3';
import { type Observable, Subject, type Subscription, catchError, defer, retry, timer, EMPTY } from 'rxjs';
import { type DeviceClassId, type DeviceInfo, type DomainName, type Port, portKey } from './device-model.js';
import { type DeviceEvent, snapshotsToEvents } from './events.js';
import { type DeviceClassDriver, type DeviceSource, type PolicyHook } from './plugin-api.js';
import { type Disposable } from './disposable.js';

export interface ListFilter {
  readonly devclass?: DeviceClassId;
  readonly backend?: DomainName;
  /** Also list devices hidden because they are in use in their backend. */
  readonly includeHidden?: boolean;
}

type EventMap = { [T in DeviceEvent['type']]: (event: Extract<DeviceEvent, { type: T }>) => void };

export interface DriverFault {
  readonly driverId: string;
  readonly sourceId: string;
  readonly error: Error;
}

/**
 * The kernel's live view of every backend's devices. Listing is synchronous, from a cache that the
 * drivers' discovery streams keep fresh; one driver failing never silences the others.
 */
export class DeviceManager extends EventEmitter<EventMap> implements Disposable {
  private readonly cache = new Map<string, DeviceInfo>();
  private readonly eventsSubject = new Subject<DeviceEvent>();
  private readonly subscriptions: Subscription[] = [];
  private readonly lastFaults = new Map<string, DriverFault>();
  readonly events$: Observable<DeviceEvent> = this.eventsSubject.asObservable();

  constructor(
    readonly drivers: readonly DeviceClassDriver[],
    readonly sources: readonly DeviceSource[],
    readonly policyHooks: readonly PolicyHook[] = [],
    private readonly faultRetryMs = 1000,
  ) {
    super();
  }

  /** Subscribes every driver to every source; sources that replay fill the cache synchronously. */
  start(): void {
    for (const source of this.sources) {
      for (const driver of this.drivers) this.subscriptions.push(this.watch(driver, source));
    }
  }

  private watch(driver: DeviceClassDriver, source: DeviceSource): Subscription {
    const pairKey = `${driver.id}@${source.id}`;
    const isolated = defer(() => driver.discover(source)).pipe(
      snapshotsToEvents(),
      catchError((error: unknown) => {
        const fault = { driverId: driver.id, sourceId: source.id, error: asError(error) };
        this.lastFaults.set(pairKey, fault);
        this.publish({ type: 'driver-fault', ...fault });
        throw error;
      }),
      // A faulted driver is retried with backoff; its last good devices stay listed meanwhile.
      retry({ delay: (_e, attempt) => timer(Math.min(this.faultRetryMs * 2 ** (attempt - 1), 60_000)) }),
      catchError(() => EMPTY),
    );
    return isolated.subscribe((event) => this.apply(event));
  }

  private apply(event: DeviceEvent): void {
    if (event.type !== 'driver-fault') {
      const key = portKey(event.device.port);
      if (event.type === 'removed') this.cache.delete(key);
      else this.cache.set(key, event.device);
    }
    this.publish(event);
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
      if (!filter.includeHidden && device.hiddenReason !== undefined) continue;
      result.push(device);
    }
    return result;
  }

  get(port: Port): DeviceInfo | undefined {
    return this.cache.get(portKey(port));
  }

  /** Drivers whose discovery failed, with the last error of each. */
  faults(): DriverFault[] {
    return [...this.lastFaults.values()];
  }

  dispose(): void {
    for (const subscription of this.subscriptions.splice(0)) subscription.unsubscribe();
    this.eventsSubject.complete();
    this.removeAllListeners();
  }
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
