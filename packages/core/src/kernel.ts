import { type DependencyContainer, type InjectionToken, container as rootContainer } from 'tsyringe';
import { DeviceManager } from './device-manager.js';
import { Disposable, DisposableCollection } from './disposable.js';
import { DevgateError, Errors } from './errors.js';
import { sanitizeText } from './sanitize.js';
import {
  Clock,
  Connector,
  DeviceClassDriver,
  type DevgateModule,
  DeviceSource,
  Logger,
  type ModuleRegistry,
  NamesDatabase,
  PLUGIN_API_VERSION,
  PolicyHook,
  SUPPORTED_PLUGIN_API_VERSIONS,
} from './plugin-api.js';

/** Where a module came from: compiled in, or a driver package named by the configuration. */
export type ModuleOrigin =
  | { readonly kind: 'built-in' }
  | {
      readonly kind: 'package';
      /** As the configuration wrote it: `@acme/devgate-driver-serial`, `./drivers/serial`. */
      readonly specifier: string;
      /** The package's own name and version (its package.json), once it was found. */
      readonly name?: string;
      readonly version?: string;
      /** The file that was loaded. */
      readonly path?: string;
    };

/** A module as the kernel holds it: what it registered, or why it was refused. */
export interface ModuleStatus {
  /** The module's id; for a package that never loaded, its specifier. */
  readonly id: string;
  readonly origin: ModuleOrigin;
  readonly state: 'loaded' | 'refused';
  /** Why it was refused (a coded error that names the package). */
  readonly error?: DevgateError;
  readonly drivers: readonly string[];
  readonly sources: readonly string[];
  readonly connectors: readonly string[];
  readonly policyHooks: readonly string[];
}

interface ModuleRecord {
  id: string;
  origin: ModuleOrigin;
  state: 'loaded' | 'refused';
  error?: DevgateError;
  drivers: string[];
  sources: string[];
  connectors: string[];
  policyHooks: string[];
  /** Its registrations, withdrawn if it is refused. */
  registrations: DisposableCollection;
}

const BUILT_IN: ModuleOrigin = { kind: 'built-in' };

/** What a kernel provides when nothing else does: the system clock, a silent log, no ID names. */
const SYSTEM_CLOCK: Clock = { now: () => Date.now() };
const SILENT_LOGGER: Logger = { debug() {}, info() {}, warn() {}, error() {} };
const NO_NAMES: NamesDatabase = { vendor: () => undefined, product: () => undefined };

/**
 * How a driver written for an older plugin API is seen through the current one. Empty while the API
 * is at version 1; version 2 adds `1: (driver) => ({ ...driver, manifest: { ...driver.manifest,
 * apiVersion: 2 }, <new member>: <v1 behaviour> })` (docs/plugin-api.md, "Versions").
 */
const ADAPTERS: Readonly<Record<number, (driver: DeviceClassDriver) => DeviceClassDriver>> = {};

/**
 * Composes modules into a running DeviceManager. Each kernel has its own child container, so apps
 * and tests never share registrations through tsyringe's global container. Drivers, sources,
 * connectors and policy hooks are registered under their tokens in that container, and `start()`
 * resolves them from it: what a test registers there (`kernel.container.register(DeviceSource,
 * ...)`) is used like what a module registered. What devgate provides to modules (Clock, Logger,
 * NamesDatabase, SysfsReader) is resolved from it too, so a test swaps any of them.
 */
export class Kernel implements ModuleRegistry, Disposable {
  readonly container: DependencyContainer;
  private readonly drivers = new Map<string, DeviceClassDriver>();
  /** Registrations taken back (a refused module, a disposed registration): the container keeps them. */
  private readonly withdrawn = new WeakSet<object>();
  private readonly records: ModuleRecord[] = [];
  private readonly owned = new DisposableCollection();
  private manager?: DeviceManager;

  constructor(parent: DependencyContainer = rootContainer) {
    this.container = parent.createChildContainer();
    this.container.registerInstance(Kernel, this);
    const provide = <T>(token: InjectionToken<T>, value: T) => {
      if (!this.container.isRegistered(token, true)) this.container.register(token, { useValue: value });
    };
    provide(Clock, SYSTEM_CLOCK);
    provide(Logger, SILENT_LOGGER);
    provide(NamesDatabase, NO_NAMES);
  }

  /** Built-in modules: a failure is the build's bug, and throws. */
  load(...modules: DevgateModule[]): this {
    for (const module of modules) {
      const record = this.record(module.id, BUILT_IN);
      this.owned.push(record.registrations);
      record.registrations.push(module.register(this.scoped(record)));
    }
    return this;
  }

  /**
   * A module that must not take the others down (a third-party driver package): if registering it
   * throws, what it registered is withdrawn and it is kept as refused, with a coded error that
   * names its package. Its missing dependencies refuse it at `start()` the same way.
   */
  loadIsolated(module: DevgateModule, origin: ModuleOrigin): ModuleStatus {
    const record = this.record(typeof module.id === 'string' ? module.id : labelOf(origin), origin);
    this.owned.push(record.registrations);
    try {
      record.registrations.push(module.register(this.scoped(record)));
    } catch (error) {
      this.refuse(record, error);
    }
    return statusOf(record);
  }

  /** Notes a package that could not be loaded at all (not found, threw on require, not a module). */
  refused(origin: ModuleOrigin, error: unknown): ModuleStatus {
    const record = this.record(labelOf(origin), origin);
    this.refuse(record, error);
    return statusOf(record);
  }

  /** Every module, loaded or refused, in load order. */
  modules(): ModuleStatus[] {
    return this.records.map(statusOf);
  }

  registerDriver(driver: DeviceClassDriver): Disposable {
    return this.addDriver(driver);
  }

  registerSource(source: DeviceSource): Disposable {
    return this.addSource(source);
  }

  registerPolicyHook(hook: PolicyHook): Disposable {
    return this.addPolicyHook(hook);
  }

  registerConnector(connector: Connector): Disposable {
    return this.addConnector(connector);
  }

  /** What devgate provides, by token; DG_NOT_PROVIDED when nothing does. */
  resolve<T>(token: InjectionToken<T>, requestedBy = 'the kernel'): T {
    if (!this.container.isRegistered(token, true)) {
      throw Errors.notProvided({ token: tokenName(token), requestedBy });
    }
    return this.container.resolve(token);
  }

  private addDriver(driver: DeviceClassDriver, record?: ModuleRecord): Disposable {
    const adapted = checkDriver(driver, this.drivers);
    this.drivers.set(adapted.id, adapted);
    this.container.register(DeviceClassDriver, { useValue: adapted });
    record?.drivers.push(adapted.id);
    return Disposable.create(() => {
      if (this.drivers.get(adapted.id) === adapted) this.drivers.delete(adapted.id);
      this.withdrawn.add(adapted);
    });
  }

  private addSource(source: DeviceSource, record?: ModuleRecord): Disposable {
    this.container.register(DeviceSource, { useValue: source });
    this.owned.push(source);
    record?.sources.push(source.id);
    return Disposable.create(() => this.withdrawn.add(source));
  }

  private addPolicyHook(hook: PolicyHook, record?: ModuleRecord): Disposable {
    this.container.register(PolicyHook, { useValue: hook });
    record?.policyHooks.push(hook.id);
    return Disposable.create(() => this.withdrawn.add(hook));
  }

  private addConnector(connector: Connector, record?: ModuleRecord): Disposable {
    this.container.register(Connector, { useValue: connector });
    this.owned.push(connector);
    record?.connectors.push(connector.id);
    return Disposable.create(() => this.withdrawn.add(connector));
  }

  /** The registry a module's `register` gets: every registration is noted as the module's. */
  private scoped(record: ModuleRecord): ModuleRegistry {
    const keep = (registration: Disposable) => {
      record.registrations.push(registration);
      return registration;
    };
    return {
      registerDriver: (driver) => keep(this.addDriver(driver, record)),
      registerSource: (source) => keep(this.addSource(source, record)),
      registerPolicyHook: (hook) => keep(this.addPolicyHook(hook, record)),
      registerConnector: (connector) => keep(this.addConnector(connector, record)),
      resolve: <T>(token: InjectionToken<T>): T => {
        const value = this.resolve(token, `module '${record.id}'`);
        // Each module's log lines say whose they are.
        return token === Logger ? (withFields(value as Logger, { module: record.id }) as T) : value;
      },
    };
  }

  private record(id: string, origin: ModuleOrigin): ModuleRecord {
    const record: ModuleRecord = {
      id,
      origin,
      state: 'loaded',
      drivers: [],
      sources: [],
      connectors: [],
      policyHooks: [],
      registrations: new DisposableCollection(),
    };
    this.records.push(record);
    return record;
  }

  private refuse(record: ModuleRecord, error: unknown): void {
    try {
      record.registrations.dispose();
    } catch {
      // A registration that fails to withdraw is withdrawn as far as it went.
    }
    record.state = 'refused';
    record.error = inModule(error, record);
  }

  /** The live registrations under a token, oldest first. */
  private resolveAll<T extends object>(token: InjectionToken<T>): T[] {
    if (!this.container.isRegistered(token, true)) return [];
    return [...new Set(this.container.resolveAll(token))].filter((item) => !this.withdrawn.has(item));
  }

  /** Checks every manifest, then starts discovery. */
  start(): DeviceManager {
    if (this.manager) return this.manager;
    const drivers = this.startingDrivers();
    const sources = this.resolveAll(DeviceSource);
    const subsystems = [...new Set(drivers.flatMap((d) => d.manifest.subsystems ?? []))].sort();
    if (subsystems.length > 0) for (const source of sources) source.readSubsystems?.(subsystems);
    const manager = new DeviceManager(
      drivers,
      sources,
      this.resolveAll(PolicyHook),
      this.resolveAll(Connector),
      this.container.resolve(Logger),
    );
    this.container.registerInstance(DeviceManager, manager);
    this.owned.push(manager);
    manager.start();
    this.manager = manager;
    return manager;
  }

  /**
   * The drivers to start with. A driver whose dependency is missing refuses its whole module when
   * the module is isolated (and so may take others that depended on it), and throws otherwise.
   */
  private startingDrivers(): DeviceClassDriver[] {
    const seen = new Map<string, DeviceClassDriver>();
    for (const driver of this.resolveAll(DeviceClassDriver)) {
      // Registered straight into the container: checked here, as registerDriver checks.
      const checked = this.drivers.get(driver.id) === driver ? driver : checkDriver(driver, seen);
      seen.set(checked.id, checked);
    }
    for (let changed = true; changed;) {
      changed = false;
      for (const driver of seen.values()) {
        const missing = (driver.manifest.dependsOn ?? []).find((dependency) => !seen.has(dependency));
        if (missing === undefined) continue;
        const error = Errors.missingDependency({ id: driver.id, dependency: missing });
        const record = this.records.find((r) => r.state === 'loaded' && r.drivers.includes(driver.id));
        if (!record || record.origin.kind === 'built-in') throw error;
        this.refuse(record, error);
        for (const id of record.drivers) seen.delete(id);
        changed = true;
      }
    }
    return [...seen.values()];
  }

  dispose(): void {
    this.owned.dispose();
    this.manager = undefined;
  }
}

/** The driver as this kernel runs it: its API version checked (and adapted), its id unique. */
function checkDriver(driver: DeviceClassDriver, known: ReadonlyMap<string, DeviceClassDriver>): DeviceClassDriver {
  if (known.has(driver.id)) throw Errors.duplicateDriver({ id: driver.id });
  const wants = driver.manifest?.apiVersion;
  const adapt = wants === PLUGIN_API_VERSION ? (d: DeviceClassDriver) => d : ADAPTERS[wants];
  if (!SUPPORTED_PLUGIN_API_VERSIONS.includes(wants) || !adapt) {
    throw Errors.incompatibleDriver({ id: driver.id, wants, kernel: PLUGIN_API_VERSION });
  }
  return adapt(driver);
}

function statusOf(record: ModuleRecord): ModuleStatus {
  return {
    id: record.id,
    origin: record.origin,
    state: record.state,
    ...(record.error ? { error: record.error } : {}),
    drivers: [...record.drivers],
    sources: [...record.sources],
    connectors: [...record.connectors],
    policyHooks: [...record.policyHooks],
  };
}

/** How an origin is named in messages: the package and where it was found. */
export function labelOf(origin: ModuleOrigin): string {
  if (origin.kind === 'built-in') return 'built-in';
  return origin.name && origin.name !== origin.specifier ? `${origin.name} (${origin.specifier})` : origin.specifier;
}

/** The same coded error, saying which package it is about (codes stay the catalogue's). */
function inModule(error: unknown, record: ModuleRecord): DevgateError {
  const where = record.origin.kind === 'package' ? `package '${labelOf(record.origin)}'` : `module '${record.id}'`;
  if (error instanceof DevgateError) {
    if (error.message.includes(where)) return error;
    return new DevgateError(error.code, `${where}: ${error.message}`, error.hint, error.kind);
  }
  const reason = sanitizeText(error instanceof Error ? error.message : String(error), 300) ?? '';
  return Errors.moduleLoadFailed({ module: labelOf(record.origin), reason: `its register() threw: ${reason}` });
}

function tokenName(token: InjectionToken<unknown>): string {
  if (typeof token === 'symbol') return token.description ?? String(token);
  if (typeof token === 'function') return token.name;
  return String(token);
}

function withFields(logger: Logger, fields: Readonly<Record<string, unknown>>): Logger {
  return {
    debug: (message, more) => logger.debug(message, { ...fields, ...more }),
    info: (message, more) => logger.info(message, { ...fields, ...more }),
    warn: (message, more) => logger.warn(message, { ...fields, ...more }),
    error: (message, more) => logger.error(message, { ...fields, ...more }),
  };
}
