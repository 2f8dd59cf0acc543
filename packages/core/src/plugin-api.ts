/**
 * The plugin API: what a device-class driver, a device source, a connector or a policy hook
 * implements, and the DI tokens they are registered under. Third-party drivers depend on this file
 * only (see docs/plugin-api.md).
 */
import { type InjectionToken } from 'tsyringe';
import { type Observable } from 'rxjs';
import { type DeviceClassId, type DeviceInfo, type DomainName } from './device-model.js';
import { type Disposable } from './disposable.js';
import { type HostTree } from './host-tree.js';

/** The plugin API version this kernel provides. A driver's manifest names the one it targets. */
export const PLUGIN_API_VERSION = 1;

export interface DriverManifest {
  /** The plugin API version the driver was written against. */
  readonly apiVersion: number;
  readonly description: string;
  /** Ids of drivers that must be registered too. */
  readonly dependsOn?: readonly DeviceClassId[];
}

/** A device class (block, usb, input, pci, ...). */
export interface DeviceClassDriver {
  /** Stable and explicit: never derived from a class name. */
  readonly id: DeviceClassId;
  readonly manifest: DriverManifest;
  /**
   * The devices of this class in one backend domain, as a stream of complete snapshots. The kernel
   * diffs successive snapshots into events, so a driver never tracks what changed.
   */
  discover(source: DeviceSource): Observable<readonly DeviceInfo[]>;
}
export const DeviceClassDriver: InjectionToken<DeviceClassDriver> = Symbol.for('devgate.DeviceClassDriver');

/** Where a backend domain's devices are read from: the local host, a recording, a remote agent. */
export interface DeviceSource extends Disposable {
  readonly id: string;
  readonly backend: DomainName;
  /** How hotplug reaches this source: `uevent`, `fs.watch`, `poll` or `static`. */
  readonly hotplug: string;
  /** Hot; replays the latest tree to each new subscriber, and emits again after every change. */
  readonly trees$: Observable<HostTree>;
}
export const DeviceSource: InjectionToken<DeviceSource> = Symbol.for('devgate.DeviceSource');

export type PolicyVerdict = { readonly verdict: 'allow' | 'deny' | 'ask'; readonly reason?: string };

export interface AttachRequest {
  readonly device: DeviceInfo;
  readonly frontend: DomainName;
  readonly options: Readonly<Record<string, string>>;
  readonly requestedBy: string;
}

/** `pre*` hooks may veto; `on*` hooks only observe. */
export interface PolicyHook {
  readonly id: string;
  preAttach?(request: AttachRequest): PolicyVerdict | Promise<PolicyVerdict>;
  onAttached?(request: AttachRequest): void;
}
export const PolicyHook: InjectionToken<PolicyHook> = Symbol.for('devgate.PolicyHook');

/** A hypervisor connection (QEMU QMP, libvirt, xl) that performs attach specs on frontends. */
export interface Connector extends Disposable {
  readonly id: string;
  isRunning(domain: DomainName): Promise<boolean>;
}
export const Connector: InjectionToken<Connector> = Symbol.for('devgate.Connector');

/** Persistent state (assignments, audit log, journal): SQLite in devgated. */
export interface StateStore extends Disposable {
  readonly id: string;
}
export const StateStore: InjectionToken<StateStore> = Symbol.for('devgate.StateStore');

/** A package's contribution: its module file registers every binding it has. */
export interface DevgateModule {
  readonly id: string;
  register(registry: ModuleRegistry): Disposable;
}

/** What a module may register into; the kernel checks each registration. */
export interface ModuleRegistry {
  registerDriver(driver: DeviceClassDriver): Disposable;
  registerSource(source: DeviceSource): Disposable;
  registerPolicyHook(hook: PolicyHook): Disposable;
}
