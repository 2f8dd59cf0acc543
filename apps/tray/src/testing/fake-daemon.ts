/**
 * A stand-in for devgated's API on Unix sockets (`<socket>` and `<socket>.rw`), for what the real
 * daemon cannot be made to do on demand: hundreds of devices at once, hostile strings in every
 * field, a restart between two events. It speaks the routes the tray calls, with devgated's JSON
 * shapes and error envelope.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { type DeviceJson } from '@devgate/core';
import { type AskJson } from '../daemon-api.js';

export interface FakeRequest {
  readonly method: string;
  readonly route: string;
  readonly body: unknown;
}

/** A refusal the fake sends instead of a success. */
export interface FakeRefusal {
  readonly status: number;
  readonly code: string;
  readonly message: string;
  readonly hint?: string;
}

export class FakeDaemon {
  devices: DeviceJson[] = [];
  asks: AskJson[] = [];
  domains: string[] = ['work', 'personal'];
  /** Answers for POST routes, by route; a success otherwise. */
  readonly refuse = new Map<string, FakeRefusal>();
  readonly requests: FakeRequest[] = [];
  /** While set, GET answers wait for it (a daemon slow to list its devices). */
  holdReads?: Promise<void>;
  private readonly streams = new Set<http.ServerResponse>();
  private servers: http.Server[] = [];

  private constructor(readonly dir: string) {}

  get socket(): string {
    return path.join(this.dir, 'devgate.sock');
  }

  static async start(): Promise<FakeDaemon> {
    const fake = new FakeDaemon(fs.mkdtempSync(path.join(os.tmpdir(), 'dg-fake-')));
    await fake.listen();
    return fake;
  }

  /** Sends one server-sent event to every open /v1/events stream. */
  send(event: string, data: unknown): void {
    for (const response of this.streams) response.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  /** A device event, as devgated's event bus sends it. */
  deviceEvent(event: 'added' | 'removed' | 'changed' | 'attached' | 'detached', device: DeviceJson): void {
    if (event === 'removed') this.devices = this.devices.filter((d) => d.port !== device.port);
    else this.devices = [...this.devices.filter((d) => d.port !== device.port), device];
    this.send('device', { type: 'device', event, device });
  }

  get openStreams(): number {
    return this.streams.size;
  }

  /** Ends the open /v1/events streams (a proxy or the network drops them); the daemon stays. */
  dropStreams(): void {
    for (const response of this.streams) response.destroy();
    this.streams.clear();
  }

  /** Like a daemon that exits: streams end, sockets go. */
  async stop(): Promise<void> {
    this.dropStreams();
    await Promise.all(
      this.servers.map((server) => {
        server.closeAllConnections();
        return new Promise((resolve) => server.close(resolve));
      }),
    );
    this.servers = [];
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.listen();
  }

  async dispose(): Promise<void> {
    await this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private async listen(): Promise<void> {
    for (const file of [this.socket, `${this.socket}.rw`]) {
      fs.rmSync(file, { force: true });
      const server = http.createServer((request, response) => this.serve(request, response));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(file, resolve);
      });
      this.servers.push(server);
    }
  }

  private serve(request: http.IncomingMessage, response: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const route = request.url ?? '';
      const text = Buffer.concat(chunks).toString('utf8');
      const body: unknown = text ? JSON.parse(text) : undefined;
      this.requests.push({ method: request.method ?? '', route, body });
      const json = (status: number, answer: unknown) => {
        response.writeHead(status, { 'content-type': 'application/json' });
        response.end(JSON.stringify(answer));
      };
      if (route === '/v1/events') {
        response.writeHead(200, { 'content-type': 'text/event-stream' });
        response.write(': devgated fake\n\n');
        this.streams.add(response);
        response.on('close', () => this.streams.delete(response));
        return;
      }
      if (request.method === 'POST') {
        const refusal = this.refuse.get(route) ?? this.detachRefusal(route, body as { device?: unknown } | undefined);
        if (refusal) {
          return json(refusal.status, { error: { code: refusal.code, message: refusal.message, hint: refusal.hint } });
        }
        return json(200, { device: this.devices[0] ?? null, detached: [], ask: this.asks[0] ?? null });
      }
      void Promise.resolve(this.holdReads).then(() => this.answerRead(route, json));
    });
  }

  /** devgated refuses to detach `backend:port:deviceId` when another device is in the port. */
  private detachRefusal(route: string, body: { device?: unknown } | undefined): FakeRefusal | undefined {
    if (route !== '/v1/detach' || typeof body?.device !== 'string') return undefined;
    // The device id is the rest: it has colons of its own.
    const [backend, portId, ...idParts] = body.device.split(':');
    if (idParts.length === 0) return undefined;
    const port = `${backend}:${portId}`;
    const inPort = this.devices.find((d) => d.port === port);
    if (inPort?.deviceId === idParts.join(':')) return undefined;
    return {
      status: 400,
      code: 'DG_NOT_ATTACHED',
      message: `${body.device} is not attached.`,
      hint: inPort ? `the device in ${port} is ${inPort.deviceId}` : `${port} lists no device`,
    };
  }

  private answerRead(route: string, json: (status: number, answer: unknown) => void): void {
    switch (route.split('?')[0]) {
      case '/v1/devices':
        return json(200, { devices: this.devices });
      case '/v1/asks':
        return json(200, { asks: this.asks });
      case '/v1/domains':
        return json(200, { domains: this.domains, running: this.domains });
      case '/v1/assignments':
        return json(200, { assignments: [] });
      case '/v1/health':
        return json(200, { sources: [] });
      default:
        return json(404, { error: { code: 'DG_NOT_FOUND', message: `no route ${route}` } });
    }
  }
}

/** A block device as devgated lists it. */
export function fakeDevice(portId: string, overrides: Partial<DeviceJson> = {}): DeviceJson {
  return {
    port: `dom0:${portId}`,
    class: 'block',
    backend: 'dom0',
    portId,
    deviceId: `0781:5567:SERIAL${portId}:u080650:1`,
    description: `USB_Storage: SanDisk Cruzer (${portId})`,
    vendor: 'SanDisk',
    product: 'Cruzer',
    manufacturer: null,
    name: 'Cruzer',
    serial: null,
    interfaces: ['u080650'],
    parent: null,
    attachment: null,
    hidden: null,
    legacyDescription: null,
    data: { size: 4 * 1024 ** 3, removable: true },
    ...overrides,
  } as DeviceJson;
}
