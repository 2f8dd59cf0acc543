/**
 * The plugin API: what a device-class driver, a device source, a connector or a policy hook
 * implements, and the DI tokens they are registered under. Third-party drivers depend on this file
 * only (see docs/plugin-api.md).
 */
import { type InjectionToken } from 'tsyringe';
import { type Observable } from 'rxjs';
import { type DeviceClassId, type DeviceInfo, type DomainName, type Port } from './device-model.js';
import { type Disposable } from './disposable.js';
import { type HostTree } from './host-tree.js';

/**
 * The plugin API version this kernel provides. A driver's manifest names the one it targets; the
 * kernel loads drivers for the versions in SUPPORTED_PLUGIN_API_VERSIONS (older ones through an
 * adapter, see docs/plugin-api.md "Versions") and refuses the others with DG_INCOMPATIBLE_DRIVER.
 */
export const PLUGIN_API_VERSION = 1;
/** Every plugin API version this kernel loads drivers for. @since 1 */
export const SUPPORTED_PLUGIN_API_VERSIONS: readonly number[] = [1];

export interface DriverManifest {
  /** The plugin API version the driver was written against. @since 1 */
  readonly apiVersion: number;
  /** @since 1 */
  readonly description: string;
  /** Ids of drivers that must be registered too. @since 1 */
  readonly dependsOn?: readonly DeviceClassId[];
  /**
   * sysfs classes or buses whose devices the driver reads, beyond those every source reads (block,
   * usb, input, pci): `['tty']` lists `/sys/class/tty/*` too. Sources that read sysfs include them.
   * @since 1
   */
  readonly subsystems?: readonly string[];
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
  /**
   * Optional: how to hand this device to a VM. Validates and normalizes the user's options (Qubes'
   * messages for bad ones) and returns what the frontend's connector must do. Never checks
   * invariants: the kernel has done that before it calls.
   */
  attachSpec?(device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec;
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
  /**
   * Optional: how this backend's devices reach a frontend. Given the driver's spec, it checks that
   * the device there now is the one that was listed, and fills in the path the connector plugs in
   * (a local node, an export served by a backend VM). Without it (a recording), nothing of this
   * backend can be attached. Never builds a path from a name alone.
   */
  dataPath?(device: DeviceInfo, spec: AttachSpec): Promise<AttachSpec>;
  /**
   * Optional: read these sysfs classes or buses too (the union of the drivers' manifest
   * `subsystems`). The kernel calls it once, before it subscribes. @since 1
   */
  readSubsystems?(subsystems: readonly string[]): void;
  /**
   * Optional: the kind a spec of this kind becomes on its data path (a backend VM's `usb-host`
   * becomes `usb-redir`), or undefined when this backend has no path for it. Without it, kinds pass
   * through unchanged. The kernel asks before anything is touched. @since 1
   */
  routesKind?(kind: string): string | undefined;
  /**
   * Optional: the events of an input device's event nodes (`event3`, ...), as they happen: Qubes'
   * input proxy, where the events of a backend VM's device go to another domain without the device.
   * Subscribing starts the flow, unsubscribing stops it. Each emission is one or more whole frames
   * (each ends with EV_SYN SYN_REPORT). Errors when the backend refuses; completes when the device
   * is gone. What it emits is untrusted: it comes from the backend. @since 1
   */
  inputEvents?(device: DeviceInfo, nodes: readonly string[]): Observable<readonly RawInputEvent[]>;
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

/** What a connector must do to attach one device: class-specific parameters, chosen by the driver. */
export interface AttachSpec {
  /** `block`, `usb-host`, ...: a connector refuses kinds it does not know. */
  readonly kind: string;
  readonly params: Readonly<Record<string, string | number | boolean>>;
  /** The options to report for the attachment (Qubes shows them in USED BY). */
  readonly options: Readonly<Record<string, string>>;
}

/** An attachment as a hypervisor reports it. */
export interface HypervisorAttachment {
  readonly port: Port;
  readonly frontend: DomainName;
  /** The identity of the device attached, recorded in the hypervisor with the attachment. */
  readonly deviceId?: string;
  readonly options: Readonly<Record<string, string>>;
}

/**
 * What happens to a frontend behind devgate's back, as its connector sees it. `stopped` covers a
 * shutdown, a crash and a killed hypervisor process; `device-removed` an attachment that vanished
 * (the guest ejected it, someone used the monitor); `device-added` a device of a backend attached
 * without devgate (`virsh attach-device`), held by that frontend from then on. @since 1
 */
export type DomainLifecycleEvent =
  | { readonly type: 'started' | 'stopped' | 'paused' | 'resumed' | 'undefined'; readonly domain: DomainName }
  | { readonly type: 'device-removed'; readonly domain: DomainName; readonly port: Port }
  | { readonly type: 'device-added'; readonly domain: DomainName; readonly attachment: HypervisorAttachment };

/** A hypervisor connection (QEMU QMP, libvirt, xl) that performs attach specs on frontends. */
export interface Connector extends Disposable {
  readonly id: string;
  /**
   * The attach spec kinds this connector performs (`block`, `usb-host`, `qemu-device`, ...). The
   * kernel refuses any other kind with DG_UNSUPPORTED_ATTACH_KIND before the backend's data path or
   * the hypervisor is touched. A connector that declares none is handed every kind and refuses
   * what it cannot do itself (connectors written before kinds were declared). @since 1
   */
  readonly attachKinds?: readonly string[];
  /** Whether this connector manages the domain (from its registry; cheap). */
  manages(domain: DomainName): boolean;
  /** Domains it manages, for listings and completion. */
  domains(): readonly DomainName[];
  isRunning(domain: DomainName): Promise<boolean>;
  /** `deviceId` is recorded with the attachment, so a read-back can tell a different device in the port. */
  attach(frontend: DomainName, port: Port, spec: AttachSpec, deviceId: string): Promise<HypervisorAttachment>;
  detach(frontend: DomainName, port: Port): Promise<void>;
  /** Everything attached through devgate, read back from the hypervisor: the truth after a restart. */
  attachments(): Promise<readonly HypervisorAttachment[]>;
  /** Optional: lifecycle of the domains it manages, hot, while subscribed. */
  readonly lifecycle$?: Observable<DomainLifecycleEvent>;
  /** Optional: gives these events to the domain's emulated input devices, in order. @since 1 */
  injectInput?(domain: DomainName, events: readonly InjectedInputEvent[]): Promise<void>;
}
export const Connector: InjectionToken<Connector> = Symbol.for('devgate.Connector');

/** One evdev event of an event node, as the kernel reports it (linux/input-event-codes.h). @since 1 */
export interface RawInputEvent {
  readonly node: string;
  readonly type: number;
  readonly code: number;
  readonly value: number;
}

/** The mouse buttons (and wheel steps) a VM's emulated input devices take. @since 1 */
export type InjectedButton = 'left' | 'right' | 'middle' | 'side' | 'extra' | 'wheel-up' | 'wheel-down';

/**
 * One event given to a VM's emulated keyboard, mouse or tablet (the model of QEMU's
 * `input-send-event`): a key by its QEMU key name (`a`, `ret`, `shift`, ...), a button, or a move;
 * absolute moves go from 0 to 0x7fff. @since 1
 */
export type InjectedInputEvent =
  | { readonly kind: 'key'; readonly key: string; readonly down: boolean }
  | { readonly kind: 'btn'; readonly button: InjectedButton; readonly down: boolean }
  | { readonly kind: 'rel' | 'abs'; readonly axis: 'x' | 'y'; readonly value: number };

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
  registerConnector(connector: Connector): Disposable;
  /**
   * What devgate provides to modules, by token (Clock, Logger, NamesDatabase, SysfsReader): a
   * module file passes them to the constructors it calls. A token nothing provides is
   * DG_NOT_PROVIDED. @since 1
   */
  resolve<T>(token: InjectionToken<T>): T;
}

// -- What devgate provides to drivers (resolve them in the module file; tests register their own)

/** The time, for drivers that stamp or age things. Default: the system clock. @since 1 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}
export const Clock: InjectionToken<Clock> = Symbol.for('devgate.Clock');

/**
 * Where a driver logs: devgated's log (JSON lines, with the module's name), the CLI's stderr at
 * `--verbose`, nothing in tests unless a test provides one. Fields are data, never interpolated. @since 1
 */
export interface Logger {
  debug(message: string, fields?: Readonly<Record<string, unknown>>): void;
  info(message: string, fields?: Readonly<Record<string, unknown>>): void;
  warn(message: string, fields?: Readonly<Record<string, unknown>>): void;
  error(message: string, fields?: Readonly<Record<string, unknown>>): void;
}
export const Logger: InjectionToken<Logger> = Symbol.for('devgate.Logger');

/**
 * Vendor and product names from the host's ID databases (hwdata's usb.ids and pci.ids). Names are
 * untrusted text like any other: sanitize them in the driver's parser. Default: no names. @since 1
 */
export interface NamesDatabase {
  vendor(bus: 'usb' | 'pci', vendorId: string): string | undefined;
  product(bus: 'usb' | 'pci', vendorId: string, productId: string): string | undefined;
}
export const NamesDatabase: InjectionToken<NamesDatabase> = Symbol.for('devgate.NamesDatabase');

/**
 * This host's sysfs, read now (not from a snapshot), bounded: for the rare driver that must read
 * an attribute at attach time. Discovery reads the HostTree its source gives it instead. @since 1
 */
export interface SysfsReader {
  /** The sysfs root read (`/sys`, or a `--sysroot`'s `sys/`). */
  readonly root: string;
  /** A text attribute of a device (`/devices/...` devpath), or undefined; never follows `..`. */
  attribute(devpath: string, name: string): string | undefined;
  /** The entries of a directory under the root (`class/tty`), or none. */
  entries(dir: string): readonly string[];
}
export const SysfsReader: InjectionToken<SysfsReader> = Symbol.for('devgate.SysfsReader');
