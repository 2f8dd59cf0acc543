/**
 * devgated's event stream (`GET /v1/events`, server-sent events) kept open for the tray's whole
 * life: it reconnects with backoff when the daemon restarts, re-reads the devices and asks after
 * each (re)connection, and turns all of it into a few deduplicated tray events. A device is
 * announced once per presence (port + device id): reconnecting never announces it again.
 */
import * as http from 'node:http';
import { type DeviceJson, type Disposable } from '@devgate/core';
import { type AskJson, type AuditJson, type DaemonApi } from './daemon-api.js';

export type TrayEvent =
  /** Reached devgated (again) and read its state. */
  | { readonly type: 'connected'; readonly first: boolean }
  | { readonly type: 'disconnected'; readonly reason: string }
  /** A device became available: it appeared, or stopped being hidden. Once per presence. */
  | { readonly type: 'available'; readonly device: DeviceJson }
  /** An announced device went away: removed (`removed`), or its medium is gone (`hidden`). */
  | { readonly type: 'gone'; readonly device: DeviceJson; readonly how: 'removed' | 'hidden' }
  | { readonly type: 'attached' | 'detached'; readonly device: DeviceJson; readonly frontend: string }
  /** Anything in the device list changed (the menu redraws). */
  | { readonly type: 'devices' }
  | { readonly type: 'ask'; readonly ask: AskJson }
  | { readonly type: 'ask-resolved'; readonly id: string; readonly verdict?: 'allow' | 'deny'; readonly by?: string }
  | { readonly type: 'audit'; readonly entry: AuditJson };

export type TrayListener = (event: TrayEvent) => void;

/** One parsed server-sent event. */
export interface SseMessage {
  readonly event: string;
  readonly data: string;
}

/**
 * Incremental parser for `text/event-stream`: feed chunks, get whole messages. Comment lines
 * (`: keep-alive`) are dropped; `data` lines of one message are joined with newlines.
 */
export class SseParser {
  private buffer = '';

  push(chunk: string): SseMessage[] {
    this.buffer += chunk;
    const messages: SseMessage[] = [];
    for (;;) {
      const match = /\r\n\r\n|\n\n|\r\r/.exec(this.buffer);
      if (!match) break;
      const block = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split(/\r\n|\n|\r/)) {
        if (line === '' || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
      if (data.length > 0) messages.push({ event, data: data.join('\n') });
    }
    // A peer that never ends a message must not make us hold unbounded text.
    if (this.buffer.length > 4 * 1024 * 1024) this.buffer = '';
    return messages;
  }
}

export interface DaemonStreamOptions {
  /** First reconnection delay; doubles up to `maxBackoffMs`. */
  readonly minBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** devgated sends a keep-alive every 15 s; a silent stream is dropped and reopened after this. */
  readonly idleTimeoutMs?: number;
}

/** Media that left their port: the device is still listed, but hidden and empty. */
export const GONE_REASONS = /^(empty loop device|no medium|not connected)$/;

interface DaemonDeviceEvent {
  readonly type: 'device';
  readonly event: 'added' | 'removed' | 'changed' | 'attached' | 'detached';
  readonly device: DeviceJson;
  readonly frontend?: string;
}

export const deviceKey = (device: Pick<DeviceJson, 'port' | 'deviceId'>): string => `${device.port}#${device.deviceId}`;

/** Available to attach: devgated does not hide it (in use in its backend, empty, ...). */
export const isOffered = (device: DeviceJson): boolean => device.hidden === null;

export class DaemonStream implements Disposable {
  private readonly listeners = new Set<TrayListener>();
  private readonly known = new Map<string, DeviceJson>();
  /** Device keys announced as available and still present. */
  private readonly announced = new Set<string>();
  /** When each announced key was first announced (for the menu's NEW mark). */
  private readonly announcedAt = new Map<string, number>();
  private readonly pendingAsks = new Map<string, AskJson>();
  private request?: http.ClientRequest;
  private retryTimer?: NodeJS.Timeout;
  private idleTimer?: NodeJS.Timeout;
  private attempt = 0;
  private everConnected = false;
  private connected = false;
  private stopped = false;
  private readonly minBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly idleTimeoutMs: number;

  constructor(
    private readonly api: DaemonApi,
    options: DaemonStreamOptions = {},
  ) {
    this.minBackoffMs = options.minBackoffMs ?? 250;
    this.maxBackoffMs = options.maxBackoffMs ?? 10_000;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 45_000;
  }

  on(listener: TrayListener): Disposable {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  }

  start(): this {
    this.open();
    return this;
  }

  get isConnected(): boolean {
    return this.connected;
  }

  /** Every device devgated lists, hidden ones included. */
  devices(): DeviceJson[] {
    return [...this.known.values()];
  }

  device(port: string): DeviceJson | undefined {
    return this.known.get(port);
  }

  asks(): AskJson[] {
    return [...this.pendingAsks.values()];
  }

  /** When the device was announced as available, if it was and still is. */
  announcedSince(device: DeviceJson): number | undefined {
    return this.announcedAt.get(deviceKey(device));
  }

  dispose(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.idleTimer);
    this.request?.destroy();
    this.request = undefined;
    this.listeners.clear();
  }

  // -- connection

  private open(): void {
    if (this.stopped) return;
    const parser = new SseParser();
    let buffered: SseMessage[] | undefined = [];
    let settled = false;
    const request = http.request({ socketPath: this.api.socket, method: 'GET', path: '/v1/events' }, (response) => {
      if (response.statusCode !== 200) {
        response.resume();
        return lost(`devgated answered ${response.statusCode} to /v1/events`);
      }
      response.setEncoding('utf8');
      this.touch(request);
      response.on('data', (chunk: string) => {
        this.touch(request);
        for (const message of parser.push(chunk)) {
          if (buffered) buffered.push(message);
          else this.handle(message);
        }
      });
      response.on('end', () => lost('devgated closed the event stream'));
      response.on('error', (error) => lost(error.message));
      response.on('close', () => lost('the event stream closed'));
      // Subscribed first, then the state is read: nothing that happens in between is lost.
      void this.resync(() => !settled).then(
        () => {
          if (settled) return;
          const replay = buffered ?? [];
          buffered = undefined;
          for (const message of replay) this.handle(message);
        },
        (error: Error) => {
          request.destroy();
          lost(error.message);
        },
      );
    });
    request.on('error', (error) => lost(error.message));
    request.end();
    this.request = request;

    const lost = (reason: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(this.idleTimer);
      request.destroy();
      if (this.request === request) this.request = undefined;
      if (this.stopped) return;
      const wasConnected = this.connected;
      this.connected = false;
      if (wasConnected) this.emit({ type: 'disconnected', reason });
      this.scheduleRetry(wasConnected);
    };
  }

  private touch(request: http.ClientRequest): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => request.destroy(new Error('the event stream went silent')), this.idleTimeoutMs);
    this.idleTimer.unref();
  }

  private scheduleRetry(wasConnected: boolean): void {
    if (wasConnected) this.attempt = 0;
    const base = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 20);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.retryTimer = setTimeout(() => this.open(), delay);
    this.retryTimer.unref();
  }

  /**
   * Reads devices and asks, and reconciles them with what we knew before the connection broke.
   * Nothing changes if the stream dropped meanwhile: the next connection reads it all again.
   */
  private async resync(streamOpen: () => boolean): Promise<void> {
    const [devices, asks] = await Promise.all([this.api.devices(), this.api.asks()]);
    if (this.stopped || !streamOpen()) return;
    const first = !this.everConnected;
    const present = new Map(devices.map((d) => [d.port, d]));
    // What we announced and is no longer there (or no longer available) went away while we were gone.
    for (const key of [...this.announced]) {
      const port = key.slice(0, key.lastIndexOf('#'));
      const now = present.get(port);
      const before = this.known.get(port);
      const samePresence = now !== undefined && deviceKey(now) === key;
      if (samePresence && (isOffered(now) || now.attachment || !GONE_REASONS.test(now.hidden ?? ''))) continue;
      this.unannounce(key);
      if (samePresence) this.emit({ type: 'gone', device: now, how: 'hidden' });
      else if (before) this.emit({ type: 'gone', device: before, how: 'removed' });
    }
    this.known.clear();
    for (const device of devices) this.known.set(device.port, device);
    for (const device of devices) {
      if (!isOffered(device) || this.announced.has(deviceKey(device))) continue;
      // At the very first connection what is already there is the baseline, not news.
      this.announce(device, !first);
    }
    const askIds = new Set(asks.map((a) => a.id));
    for (const id of [...this.pendingAsks.keys()]) {
      if (!askIds.has(id)) {
        this.pendingAsks.delete(id);
        this.emit({ type: 'ask-resolved', id });
      }
    }
    this.attempt = 0;
    this.everConnected = true;
    this.connected = true;
    this.emit({ type: 'connected', first });
    this.emit({ type: 'devices' });
    for (const ask of asks) this.noteAsk(ask);
  }

  // -- events

  private handle(message: SseMessage): void {
    let data: unknown;
    try {
      data = JSON.parse(message.data);
    } catch {
      return; // not ours to interpret
    }
    if (!data || typeof data !== 'object') return;
    switch (message.event) {
      case 'device':
        return this.onDevice(data as DaemonDeviceEvent);
      case 'ask':
        return this.noteAsk((data as { ask: AskJson }).ask);
      case 'ask-resolved': {
        const { id, verdict, by } = data as { id: string; verdict: 'allow' | 'deny'; by: string };
        if (this.pendingAsks.delete(id)) this.emit({ type: 'ask-resolved', id, verdict, by });
        return;
      }
      case 'audit':
        return this.emit({ type: 'audit', entry: (data as { entry: AuditJson }).entry });
      default:
        return;
    }
  }

  private onDevice(event: DaemonDeviceEvent): void {
    const device = event.device;
    if (!device || typeof device.port !== 'string') return;
    const key = deviceKey(device);
    if (event.event === 'removed') {
      this.known.delete(device.port);
      if (this.unannounce(key)) this.emit({ type: 'gone', device, how: 'removed' });
      this.emit({ type: 'devices' });
      return;
    }
    const previous = this.known.get(device.port);
    this.known.set(device.port, device);
    // Another device took this port: the old one is gone.
    if (previous && deviceKey(previous) !== key && this.unannounce(deviceKey(previous))) {
      this.emit({ type: 'gone', device: previous, how: 'removed' });
    }
    if (isOffered(device)) {
      if (!this.announced.has(key)) this.announce(device, true);
    } else if (this.announced.has(key) && !device.attachment && GONE_REASONS.test(device.hidden ?? '')) {
      this.unannounce(key);
      this.emit({ type: 'gone', device, how: 'hidden' });
    }
    if ((event.event === 'attached' || event.event === 'detached') && event.frontend) {
      this.emit({ type: event.event, device, frontend: event.frontend });
    }
    this.emit({ type: 'devices' });
  }

  private announce(device: DeviceJson, notify: boolean): void {
    const key = deviceKey(device);
    this.announced.add(key);
    if (notify) {
      this.announcedAt.set(key, Date.now());
      this.emit({ type: 'available', device });
    }
  }

  private unannounce(key: string): boolean {
    this.announcedAt.delete(key);
    return this.announced.delete(key);
  }

  private noteAsk(ask: AskJson): void {
    if (!ask || typeof ask.id !== 'string' || this.pendingAsks.has(ask.id)) return;
    this.pendingAsks.set(ask.id, ask);
    this.emit({ type: 'ask', ask });
  }

  private emit(event: TrayEvent): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch {
        // one listener failing never stops the others
      }
    }
  }
}
