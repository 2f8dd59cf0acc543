import { type Observable, type OperatorFunction, concatMap, from } from 'rxjs';
import { type DeviceInfo, type DomainName, type Port, portKey } from './device-model.js';
import { type DomainLifecycleEvent } from './plugin-api.js';

/** Everything the kernel reports. Typed, never built from strings. */
export type DeviceEvent =
  | { readonly type: 'added'; readonly device: DeviceInfo }
  | { readonly type: 'removed'; readonly device: DeviceInfo }
  | { readonly type: 'changed'; readonly device: DeviceInfo; readonly previous: DeviceInfo }
  | { readonly type: 'attached'; readonly device: DeviceInfo; readonly frontend: DomainName }
  | { readonly type: 'detached'; readonly device: DeviceInfo; readonly frontend: DomainName }
  | { readonly type: 'driver-fault'; readonly driverId: string; readonly sourceId: string; readonly error: Error }
  | AttachmentEndedEvent
  | { readonly type: 'domain'; readonly domain: DomainName; readonly state: DomainLifecycleEvent['type'] };

/** Why the kernel ended an attachment that nobody asked to detach. */
export type AttachmentEndReason = 'device-removed' | 'frontend-stopped' | 'removed-by-frontend' | 'device-replaced';

/**
 * An attachment the kernel ended by itself, published after the hypervisor was told, with the real
 * outcome: `error` when the detach failed (the device is gone from the backend all the same).
 */
export interface AttachmentEndedEvent {
  readonly type: 'attachment-ended';
  readonly port: Port;
  readonly deviceId?: string;
  readonly frontend: DomainName;
  readonly reason: AttachmentEndReason;
  readonly outcome: 'ok' | 'error';
  readonly error?: Error;
}

export type DeviceEventType = DeviceEvent['type'];

/** The difference between two snapshots of one (driver, source) pair, as events. */
export function diffSnapshots(previous: ReadonlyMap<string, DeviceInfo>, next: readonly DeviceInfo[]): DeviceEvent[] {
  const events: DeviceEvent[] = [];
  const seen = new Set<string>();
  for (const device of next) {
    const key = portKey(device.port);
    seen.add(key);
    deviceEvents(previous.get(key), device, events);
  }
  for (const [key, device] of previous) if (!seen.has(key)) removalEvents(device, events);
  return events;
}

/** What one device's new state says against its previous one (none: it is new). */
function deviceEvents(before: DeviceInfo | undefined, device: DeviceInfo, events: DeviceEvent[]): void {
  if (before === device) return; // drivers hand back the same object for a device that did not change
  if (!before) {
    events.push({ type: 'added', device });
    if (device.attachment) events.push({ type: 'attached', device, frontend: device.attachment.frontend });
    return;
  }
  const wasAttachedTo = before.attachment?.frontend;
  const isAttachedTo = device.attachment?.frontend;
  if (wasAttachedTo !== isAttachedTo && wasAttachedTo !== undefined) {
    events.push({ type: 'detached', device, frontend: wasAttachedTo });
  }
  if (!sameDevice(before, device)) events.push({ type: 'changed', device, previous: before });
  if (wasAttachedTo !== isAttachedTo && isAttachedTo !== undefined) {
    events.push({ type: 'attached', device, frontend: isAttachedTo });
  }
}

function removalEvents(device: DeviceInfo, events: DeviceEvent[]): void {
  if (device.attachment) events.push({ type: 'detached', device, frontend: device.attachment.frontend });
  events.push({ type: 'removed', device });
}

/**
 * Turns successive snapshots into added / removed / changed / attached / detached events. The
 * previous snapshot is kept as one map updated in place, marked with the snapshot it was last in:
 * a snapshot of 500 devices of which 2 are new costs a lookup per device, not a new map of 500.
 */
export function snapshotsToEvents(
  /** Each device's port key, shared with whoever computed it first (the kernel's snapshot check). */
  keys = new WeakMap<DeviceInfo, string>(),
): OperatorFunction<readonly DeviceInfo[], DeviceEvent> {
  return (snapshots: Observable<readonly DeviceInfo[]>) => {
    const current = new Map<string, { device: DeviceInfo; generation: number }>();
    let generation = 0;
    let previous: readonly DeviceInfo[] = [];
    return snapshots.pipe(
      concatMap((snapshot) => {
        const events: DeviceEvent[] = [];
        const known = current.size;
        let kept = 0;
        generation++;
        for (const device of snapshot) {
          let key = keys.get(device);
          if (key === undefined) {
            key = portKey(device.port);
            keys.set(device, key);
          }
          const entry = current.get(key);
          if (!entry) {
            current.set(key, { device, generation });
            deviceEvents(undefined, device, events);
            continue;
          }
          if (entry.generation !== generation) kept++;
          const before = entry.device;
          entry.device = device;
          entry.generation = generation;
          deviceEvents(before, device, events);
        }
        if (kept < known) {
          // In the previous snapshot's order, as its map was iterated before.
          for (const device of previous) {
            const key = keys.get(device)!;
            const entry = current.get(key);
            if (!entry || entry.generation === generation) continue;
            current.delete(key);
            removalEvents(entry.device, events);
          }
        }
        previous = snapshot;
        return from(events);
      }),
    );
  };
}

/** Equal apart from the attachment, which has events of its own. */
function sameDevice(a: DeviceInfo, b: DeviceInfo): boolean {
  if (a === b) return true; // drivers hand back the same object for a device that did not change
  return sameValue(a, b, 'attachment');
}

/**
 * Equal as JSON data (a key whose value is undefined counts as absent), compared in place: drivers
 * that build every device again for each tree (a dozen PCI functions, every few milliseconds in a
 * burst) are compared without serializing both sides each time.
 */
function sameValue(a: unknown, b: unknown, skip?: string): boolean {
  if (a === b) return true;
  // JSON writes NaN (and the infinities) as null.
  if (typeof a === 'number' && typeof b === 'number') return !Number.isFinite(a) && !Number.isFinite(b);
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const other = b as unknown[];
    if (a.length !== other.length) return false;
    for (let i = 0; i < a.length; i++) if (!sameValue(a[i], other[i])) return false;
    return true;
  }
  const left = a as Record<string, unknown>;
  const right = b as Record<string, unknown>;
  let count = 0;
  for (const key in left) {
    if (key === skip || left[key] === undefined) continue;
    count++;
    if (!sameValue(left[key], right[key])) return false;
  }
  for (const key in right) if (key !== skip && right[key] !== undefined) count--;
  return count === 0;
}
