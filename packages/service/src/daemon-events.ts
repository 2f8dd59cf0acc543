import { Subject } from 'rxjs';
import { type DeviceEvent, type DeviceJson, deviceJsonBytes, deviceToJson } from '@devgate/core';
import { type AskJson } from '@devgate/client';
import { type AuditEntry } from './store/audit-log.js';

/** A pending question: may this device go to one of these frontends? (The API's own shape.) */
export type Ask = AskJson;

/** Everything devgated streams to clients (`GET /v1/events`). */
export type DaemonEvent =
  | {
      readonly type: 'device';
      readonly event: Extract<DeviceEvent, { readonly device: unknown }>['type'];
      readonly device: DeviceJson;
      readonly frontend?: string;
    }
  | { readonly type: 'driver-fault'; readonly driverId: string; readonly sourceId: string; readonly message: string }
  | { readonly type: 'domain'; readonly domain: string; readonly state: string }
  | { readonly type: 'ask'; readonly ask: Ask }
  | { readonly type: 'ask-resolved'; readonly id: string; readonly verdict: 'allow' | 'deny'; readonly by: string }
  | { readonly type: 'audit'; readonly entry: AuditEntry };

export class DaemonEvents {
  private readonly subject = new Subject<DaemonEvent>();
  readonly events$ = this.subject.asObservable();
  /** Each event as one server-sent-events frame, made once whatever the number of clients. */
  private readonly frames = new WeakMap<DaemonEvent, string | Buffer>();

  publish(event: DaemonEvent): void {
    this.subject.next(event);
  }

  /** `event: TYPE`, `data: JSON`, a blank line: what `GET /v1/events` writes for this event. */
  frame(event: DaemonEvent): string | Buffer {
    let frame = this.frames.get(event);
    if (frame === undefined) {
      frame = `event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`;
      this.frames.set(event, frame);
    }
    return frame;
  }

  publishDevice(event: DeviceEvent): void {
    if (event.type === 'driver-fault') {
      this.publish({
        type: 'driver-fault',
        driverId: event.driverId,
        sourceId: event.sourceId,
        message: event.error.message,
      });
      return;
    }
    if (event.type === 'domain') return this.publish({ type: 'domain', domain: event.domain, state: event.state });
    // Attachments the kernel ended reach clients as the audit entry devgated writes for them.
    if (event.type === 'attachment-ended') return;
    const frontend = event.type === 'attached' || event.type === 'detached' ? event.frontend : undefined;
    const device = deviceToJson(event.device);
    const published: DaemonEvent = { type: 'device', event: event.type, device, ...(frontend ? { frontend } : {}) };
    // Its frame around the device's serialized JSON, which the list answers share: the device is
    // serialized once, however many clients list it or stream it (byte for byte JSON.stringify's).
    this.frames.set(
      published,
      Buffer.concat([
        Buffer.from(`event: device\ndata: {"type":"device","event":${JSON.stringify(event.type)},"device":`),
        deviceJsonBytes(event.device, device),
        Buffer.from(`${frontend ? `,"frontend":${JSON.stringify(frontend)}` : ''}}\n\n`),
      ]),
    );
    this.publish(published);
  }

  complete(): void {
    this.subject.complete();
  }
}
