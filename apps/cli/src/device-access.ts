import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  type DeviceJson,
  DevgateError,
  type DriverReport,
  Errors,
  deviceToJson,
  driverReport,
  portLabel,
  parseDeviceArgument,
} from '@devgate/core';
import { inProcessConfig } from './configured-modules.js';
import { DaemonEvents, DeviceService, type SqliteStateStore, denyListHook, openStateStore } from '@devgate/service';
import { type HostOptions, type OpenHost, withHost } from './host.js';
import {
  ApiError,
  type AssignmentJson,
  callApi,
  daemonPresent,
  localActor,
  nobodyListens,
  resolveSocket,
} from '@devgate/client';
import { type Io } from './io.js';

export interface AssignRequest {
  readonly devclass: string;
  readonly frontend: string;
  readonly device: string;
  readonly mode: 'auto-attach' | 'ask-to-attach' | 'required';
  readonly only?: 'port' | 'device';
  readonly options: Readonly<Record<string, string>>;
}

/** What a command can do, through devgated or, without one, in-process. */
export interface DeviceAccess {
  readonly viaDaemon: boolean;
  /** DG_DAEMON_UNAVAILABLE unless through devgated: for `what`, which only devgated can do. */
  requireDaemon(what: string): void;
  list(filter: { devclass?: string; all?: boolean }): Promise<DeviceJson[]>;
  domains(): Promise<string[]>;
  attach(devclass: string, frontend: string, device: string, options: Record<string, string>): Promise<void>;
  /** With no device, every device of the class attached to the frontend. */
  detach(devclass: string, frontend: string, device?: string): Promise<void>;
  assignments(devclass?: string): Promise<AssignmentJson[]>;
  assign(request: AssignRequest): Promise<void>;
  unassign(request: Omit<AssignRequest, 'mode' | 'options' | 'device'> & { device?: string }): Promise<number>;
  daemon<T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T>;
  /** Every driver with its origin and health, and the driver packages that were refused. */
  drivers(): Promise<DriverReport[]>;
  /** The device classes there are drivers for: the built-in ones and the configured packages'. */
  classes(): Promise<string[]>;
}

export interface AccessOptions extends HostOptions {
  readonly socket?: string;
}

/**
 * Runs `work` against devgated when it runs (and the host is this one); otherwise in-process, where
 * listing and attaching work but persistent state (assignments, asks, audit) needs the daemon.
 */
export async function withAccess<T>(
  options: AccessOptions,
  io: Io,
  work: (access: DeviceAccess) => Promise<T>,
): Promise<T> {
  const socket = resolveSocket(options.socket);
  const ownTree = Boolean(options.sysroot || options.recording);
  if (!ownTree && daemonPresent(socket)) {
    const daemon = daemonAccess(socket);
    try {
      return await translate(() => work(daemon));
    } catch (error) {
      // A socket nobody listens on (a devgated that died left it) is no devgated: nothing reached
      // one, so the command runs in-process. Told by the refused request, not by connecting first,
      // which would cost every command devgated answers a round trip.
      if (!daemon.nobodyListened()) throw error;
    }
  }
  if (!ownTree) io.notice(`devgated is not running (${socket}); working in-process\n`);
  // Attaching in-process goes through devgated's own service on devgated's state: the same deny
  // lists, journal and audit. The state is opened only by a command that changes something.
  // devgated's own configuration names the state and the registry it keeps: an in-process attach is
  // held to the same deny lists, and sees the same domains.
  const configured = await inProcessConfig();
  let store: SqliteStateStore | undefined;
  const state = () => (store ??= openStateStore(configured.stateDir));
  // A listing creates nothing: no state store where devgated never made one.
  const stateMade = () => store !== undefined || fs.existsSync(path.join(configured.stateDir, 'state.db'));
  try {
    const modules = options.modules ?? configured.modules;
    const domains = options.domains ?? configured.domains;
    return await withHost({ ...options, domains, modules, policyHooks: [denyListHook(state)] }, (host) =>
      work(inProcessAccess(host, state, stateMade, socket)),
    );
  } finally {
    store?.dispose();
  }
}

function daemonAccess(socket: string): DeviceAccess & { nobodyListened(): boolean } {
  let refused = false;
  let reached = false;
  const api = async <T>(method: 'GET' | 'POST', route: string, body?: unknown) => {
    try {
      const answer = await callApi<T>(socket, method, route, body);
      reached = true;
      return answer;
    } catch (error) {
      if (nobodyListens(error)) refused = true;
      else reached = true; // a timeout or a reset may come after devgated got the request
      throw error;
    }
  };
  return {
    nobodyListened: () => refused && !reached,
    viaDaemon: true,
    requireDaemon: () => undefined,
    async list({ devclass, all }) {
      const query = new URLSearchParams();
      if (devclass) query.set('class', devclass);
      if (all) query.set('all', 'true');
      return (await api<{ devices: DeviceJson[] }>('GET', `/v1/devices?${query}`)).devices;
    },
    async domains() {
      return (await api<{ domains: string[] }>('GET', '/v1/domains')).domains;
    },
    async attach(devclass, frontend, device, options) {
      await api('POST', '/v1/attach', { class: devclass, frontend, device, options });
    },
    async detach(devclass, frontend, device) {
      await api('POST', '/v1/detach', { class: devclass, frontend, ...(device ? { device } : {}) });
    },
    async assignments(devclass) {
      const query = devclass ? `?class=${encodeURIComponent(devclass)}` : '';
      return (await api<{ assignments: AssignmentJson[] }>('GET', `/v1/assignments${query}`)).assignments;
    },
    async assign(request) {
      const { devclass, ...rest } = request;
      await api('POST', '/v1/assignments', { class: devclass, ...rest });
    },
    async unassign(request) {
      const { devclass, ...rest } = request;
      return (await api<{ removed: number }>('POST', '/v1/assignments/remove', { class: devclass, ...rest })).removed;
    },
    daemon: api,
    async drivers() {
      return (await api<{ drivers: DriverReport[] }>('GET', '/v1/drivers')).drivers;
    },
    async classes() {
      return classesOf(await this.drivers());
    },
  };
}

function inProcessAccess(
  host: OpenHost,
  state: () => SqliteStateStore,
  stateMade: () => boolean,
  socket: string,
): DeviceAccess {
  const needsDaemon = (what = 'this'): never => {
    throw Errors.daemonUnavailable({ socket, reason: `${what} needs devgated (it keeps the state)` });
  };
  const service = () => new DeviceService(host.manager, state(), new DaemonEvents());
  const actor = `${localActor()} (in-process)`;
  return {
    viaDaemon: false,
    requireDaemon: needsDaemon,
    async list({ devclass, all }) {
      return host.manager.list({ devclass, includeHidden: all }).map(deviceToJson);
    },
    async domains() {
      return host.manager.domains();
    },
    async attach(devclass, frontend, device, options) {
      await service().attach({ devclass, frontend, device, options }, actor);
    },
    async detach(devclass, frontend, device) {
      if (!host.manager.domains().includes(frontend)) throw Errors.noConnector({ domain: frontend });
      await service().detach({ devclass, frontend, device }, actor);
    },
    async assignments(devclass) {
      if (!stateMade()) return [];
      return state().assignments.list(devclass === undefined ? {} : { devclass });
    },
    assign: async () => needsDaemon(),
    unassign: async () => needsDaemon(),
    daemon: async () => needsDaemon(),
    async drivers() {
      return driverReport(host.kernel, host.manager);
    },
    async classes() {
      return classesOf(driverReport(host.kernel, host.manager));
    },
  };
}

function classesOf(drivers: readonly DriverReport[]): string[] {
  return drivers.flatMap((d) => (d.class !== null && d.health !== 'refused' ? [d.class] : []));
}

/** DG_UNKNOWN_DEVICE_CLASS unless a loaded driver has the class (through devgated: one it loaded). */
export async function assertDeviceClass(access: DeviceAccess, devclass: string): Promise<void> {
  const known = await access.classes();
  if (!known.includes(devclass)) throw Errors.unknownDeviceClass({ devclass, known });
}

/** API errors become the CLI's coded errors, with the daemon's message and hint. */
async function translate<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    throw error instanceof ApiError ? fromApiError(error) : error;
  }
}

/** devgated's error as the CLI's: a request it refused as malformed (400) is a usage error. */
export function fromApiError(error: ApiError): DevgateError {
  return new DevgateError(error.code, error.message, error.hint, error.status === 400 ? 'usage' : 'runtime');
}

/** Finds who holds a device, for `qvm-block -d DEVICE` without a VM. */
export async function holderOf(access: DeviceAccess, devclass: string, device: string): Promise<string> {
  const { backend, portId } = parseDeviceArgument(device);
  const found = (await access.list({ devclass, all: true })).find((d) => d.backend === backend && d.portId === portId);
  if (!found?.attachment) throw Errors.notAttached({ device: portLabel({ backend, portId }) });
  return found.attachment.frontend;
}
