// The tray's side of devgated's API, on @devgate/client.
import { type AskJson, type AssignmentJson, type HealthJson, callApi, localActor } from '@devgate/client';
import { type DeviceJson } from '@devgate/core';

export {
  ApiError,
  type AskJson,
  type AssignmentJson,
  type AuditJson,
  type HealthJson,
  resolveSocket,
} from '@devgate/client';

/**
 * The device as the user saw it, `backend:port:deviceId` (Qubes' form): if another device has taken
 * the port since, devgated refuses to attach or detach it instead of acting on the wrong one.
 */
export function seenDevice(device: Pick<DeviceJson, 'port' | 'deviceId'>): string {
  return `${device.port}:${device.deviceId}`;
}

/** What the tray says it is in devgated's audit log (the daemon adds the socket it came through). */
export const TRAY_ACTOR_PREFIX = 'devgate-tray';

export class DaemonApi {
  constructor(
    readonly socket: string,
    private readonly timeoutMs = 60_000,
  ) {}

  async devices(): Promise<DeviceJson[]> {
    return (await this.request<{ devices: DeviceJson[] }>('GET', '/v1/devices?all=true')).devices;
  }

  /** The domains that can take a device now (devgated's `running`): a stopped VM is no target. */
  async domains(): Promise<string[]> {
    const answer = await this.request<{ domains: string[]; running?: string[] }>('GET', '/v1/domains');
    return answer.running ?? answer.domains;
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
    return callApi<T>(this.socket, method, route, body, { timeoutMs: this.timeoutMs, actor: trayActor() });
  }
}

/** `devgate-tray uid=1000(alice)`: devgated records it, with the socket, as who acted. */
export function trayActor(): string {
  return `${TRAY_ACTOR_PREFIX} ${localActor()}`;
}
