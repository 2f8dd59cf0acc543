import { type DependencyContainer, container as rootContainer } from 'tsyringe';
import { DeviceManager } from './device-manager.js';
import { Disposable, DisposableCollection } from './disposable.js';
import { Errors } from './errors.js';
import {
  Connector,
  DeviceClassDriver,
  type DevgateModule,
  DeviceSource,
  type ModuleRegistry,
  PLUGIN_API_VERSION,
  PolicyHook,
} from './plugin-api.js';

/**
 * Composes modules into a running DeviceManager. Each kernel has its own child container, so apps
 * and tests never share registrations through tsyringe's global container.
 */
export class Kernel implements ModuleRegistry, Disposable {
  readonly container: DependencyContainer;
  private readonly drivers = new Map<string, DeviceClassDriver>();
  private readonly sources: DeviceSource[] = [];
  private readonly hooks: PolicyHook[] = [];
  private readonly connectors: Connector[] = [];
  private readonly owned = new DisposableCollection();
  private manager?: DeviceManager;

  constructor(parent: DependencyContainer = rootContainer) {
    this.container = parent.createChildContainer();
    this.container.registerInstance(Kernel, this);
  }

  load(...modules: DevgateModule[]): this {
    for (const module of modules) this.owned.push(module.register(this));
    return this;
  }

  registerDriver(driver: DeviceClassDriver): Disposable {
    if (this.drivers.has(driver.id)) throw Errors.duplicateDriver({ id: driver.id });
    if (driver.manifest.apiVersion !== PLUGIN_API_VERSION) {
      throw Errors.incompatibleDriver({ id: driver.id, wants: driver.manifest.apiVersion, kernel: PLUGIN_API_VERSION });
    }
    this.drivers.set(driver.id, driver);
    this.container.register(DeviceClassDriver, { useValue: driver });
    return Disposable.create(() => this.drivers.delete(driver.id));
  }

  registerSource(source: DeviceSource): Disposable {
    this.sources.push(source);
    this.container.register(DeviceSource, { useValue: source });
    this.owned.push(source);
    return Disposable.create(() => remove(this.sources, source));
  }

  registerPolicyHook(hook: PolicyHook): Disposable {
    this.hooks.push(hook);
    this.container.register(PolicyHook, { useValue: hook });
    return Disposable.create(() => remove(this.hooks, hook));
  }

  registerConnector(connector: Connector): Disposable {
    this.connectors.push(connector);
    this.container.register(Connector, { useValue: connector });
    this.owned.push(connector);
    return Disposable.create(() => remove(this.connectors, connector));
  }

  /** Checks every manifest, then starts discovery. */
  start(): DeviceManager {
    if (this.manager) return this.manager;
    for (const driver of this.drivers.values()) {
      for (const dependency of driver.manifest.dependsOn ?? []) {
        if (!this.drivers.has(dependency)) throw Errors.missingDependency({ id: driver.id, dependency });
      }
    }
    const manager = new DeviceManager(
      [...this.drivers.values()],
      [...this.sources],
      [...this.hooks],
      [...this.connectors],
    );
    this.container.registerInstance(DeviceManager, manager);
    this.owned.push(manager);
    manager.start();
    this.manager = manager;
    return manager;
  }

  dispose(): void {
    this.owned.dispose();
    this.manager = undefined;
  }
}

function remove<T>(list: T[], item: T): void {
  const i = list.indexOf(item);
  if (i >= 0) list.splice(i, 1);
}
