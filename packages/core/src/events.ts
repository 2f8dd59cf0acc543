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
    const before = previous.get(key);
    if (!before) {
      events.push({ type: 'added', device });
      if (device.attachment) events.push({ type: 'attached', device, frontend: device.attachment.frontend });
      continue;
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
  for (const [key, device] of previous) {
    if (seen.has(key)) continue;
    if (device.attachment) events.push({ type: 'detached', device, frontend: device.attachment.frontend });
    events.push({ type: 'removed', device });
  }
  return events;
}

/** Turns successive snapshots into added / removed / changed / attached / detached events. */
export function snapshotsToEvents(): OperatorFunction<readonly DeviceInfo[], DeviceEvent> {
  return (snapshots: Observable<readonly DeviceInfo[]>) => {
    let current = new Map<string, DeviceInfo>();
    return snapshots.pipe(
      concatMap((snapshot) => {
        const events = diffSnapshots(current, snapshot);
        current = new Map(snapshot.map((d) => [portKey(d.port), d]));
        return from(events);
      }),
    );
  };
}

/** Equal apart from the attachment, which has events of its own. */
function sameDevice(a: DeviceInfo, b: DeviceInfo): boolean {
  if (a === b) return true; // drivers hand back the same object for a device that did not change
  return JSON.stringify({ ...a, attachment: undefined }) === JSON.stringify({ ...b, attachment: undefined });
}
