// The tray's side of devgated's API: plain node:http over the daemon's Unix sockets (the approach of
// apps/cli/src/daemon-client.ts; the tray does not import the CLI).
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { type DeviceJson } from '@devgate/core';

/** A coded error as devgated reports it (`{error: {code, message, hint?}}`), or a transport failure. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

/** A pending question (devgated's `Ask`). */
export interface AskJson {
  readonly id: string;
  readonly devclass: string;
  /** `backend:port` */
  readonly device: string;
  readonly deviceId: string;
  readonly description: string;
  readonly candidates: readonly string[];
  readonly reason: string;
  readonly createdAt: string;
  readonly expiresAt: string;
  readonly rememberable: boolean;
}

export interface AssignmentJson {
  readonly devclass: string;
  readonly backend: string;
  readonly portId: string;
  readonly deviceId: string;
  readonly frontend: string;
  readonly mode: string;
}

export interface AuditJson {
  readonly id: number;
  readonly at: string;
  readonly actor: string;
  readonly action: string;
  readonly devclass?: string | null;
  readonly backend?: string | null;
  readonly portId?: string | null;
  readonly deviceId?: string | null;
  readonly frontend?: string | null;
  readonly outcome: string;
  readonly code?: string | null;
  readonly reason?: string | null;
}

export interface HealthJson {
  readonly version: string;
  readonly sources: readonly { readonly id: string; readonly backend: string; readonly hotplug: boolean }[];
}

/** What the tray says it is in devgated's audit log (the daemon adds the socket it came through). */
export const TRAY_ACTOR_PREFIX = 'devgate-tray';

/** The API socket: --socket, $DEVGATE_SOCKET, then devgated's default for this user. */
export function resolveSocket(explicit?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (explicit) return explicit;
  if (env.DEVGATE_SOCKET) return env.DEVGATE_SOCKET;
  if (process.getuid?.() === 0) return '/run/devgate/devgate.sock';
  return path.join(env.XDG_RUNTIME_DIR ?? os.tmpdir(), 'devgate', 'devgate.sock');
}

export class DaemonApi {
  constructor(
    readonly socket: string,
    private readonly timeoutMs = 60_000,
  ) {}

  async devices(): Promise<DeviceJson[]> {
    return (await this.request<{ devices: DeviceJson[] }>('GET', '/v1/devices?all=true')).devices;
  }

  async domains(): Promise<string[]> {
    return (await this.request<{ domains: string[] }>('GET', '/v1/domains')).domains;
  }

  async assignments(): Promise<AssignmentJson[]> {
    return (await this.request<{ assignments: AssignmentJson[] }>('GET', '/v1/assignments')).assignments;
  }

  async asks(): Promise<AskJson[]> {
    return (await this.request<{ asks: AskJson[] }>('GET', '/v1/asks')).asks;
  }

  health(): Promise<HealthJson> {
    return this.request<HealthJson>('GET', '/v1/health');
  }

  async attach(devclass: string, frontend: string, device: string): Promise<DeviceJson> {
    return (await this.request<{ device: DeviceJson }>('POST', '/v1/attach', { class: devclass, frontend, device }))
      .device;
  }

  async detach(devclass: string, frontend: string, device: string): Promise<string[]> {
    return (await this.request<{ detached: string[] }>('POST', '/v1/detach', { class: devclass, frontend, device }))
      .detached;
  }

  async answer(
    id: string,
    answer: { verdict: 'allow' | 'deny'; frontend?: string; remember?: boolean },
  ): Promise<AskJson> {
    return (await this.request<{ ask: AskJson }>('POST', `/v1/asks/${encodeURIComponent(id)}/answer`, answer)).ask;
  }

  request<T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T> {
    // State changes go to the `.rw` socket, which only allowed users can open.
    const socketPath = method === 'GET' ? this.socket : `${this.socket}.rw`;
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const request = http.request(
        {
          socketPath,
          method,
          path: route,
          headers: {
            ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
            'x-devgate-actor': trayActor(),
          },
          timeout: this.timeoutMs,
        },
        (response) => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.on('end', () => {
            let parsed: { error?: { code: string; message: string; hint?: string } } & Record<string, unknown>;
            try {
              parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              return reject(
                new ApiError('DG_DAEMON_UNAVAILABLE', `devgated sent a malformed answer (${response.statusCode})`),
              );
            }
            if (parsed.error) {
              const { code, message, hint } = parsed.error;
              return reject(new ApiError(String(code), String(message), hint, response.statusCode));
            }
            resolve(parsed as T);
          });
        },
      );
      request.on('timeout', () => request.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      request.on('error', (error: NodeJS.ErrnoException) => {
        if (error.code === 'EACCES' && method !== 'GET') {
          reject(
            new ApiError(
              'DG_NOT_ALLOWED',
              `you may not change devgate's state (no access to ${socketPath})`,
              "an administrator can add you to the 'access' users or groups of devgated's configuration",
            ),
          );
        } else {
          reject(
            new ApiError(
              'DG_DAEMON_UNAVAILABLE',
              `devgated is not reachable at ${socketPath}: ${error.message}`,
              'start it (systemctl start devgated), or pass --socket PATH / set DEVGATE_SOCKET',
            ),
          );
        }
      });
      request.end(payload);
    });
  }
}

/** `devgate-tray uid=1000(alice)`: devgated records it, with the socket, as who acted. */
export function trayActor(): string {
  const uid = process.getuid?.() ?? -1;
  let name = '';
  try {
    name = os.userInfo().username;
  } catch {
    // no passwd entry for this uid
  }
  return `${TRAY_ACTOR_PREFIX} ${name ? `uid=${uid}(${name})` : `uid=${uid}`}`;
}
