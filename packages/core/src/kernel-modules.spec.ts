import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BehaviorSubject, type Observable, map } from 'rxjs';
import { type DeviceInfo } from './device-model';
import { type DevgateError } from './errors';
import { HostTree, recordOf } from './host-tree';
import { Kernel } from './kernel';
import { loadDriverPackages } from './module-loader';
import {
  type AttachSpec,
  Clock,
  type Connector,
  type DeviceClassDriver,
  DeviceSource,
  type DevgateModule,
  Logger,
  PLUGIN_API_VERSION,
  SysfsReader,
} from './plugin-api';

function source(backend = 'dom0', extra: Partial<DeviceSource> = {}): DeviceSource {
  const tree = new HostTree([recordOf('/devices/virtual/test/one', 'test', {})]);
  return {
    id: `test:${backend}`,
    backend,
    hotplug: 'static',
    trees$: new BehaviorSubject(tree),
    dispose() {},
    ...extra,
  };
}

function driver(id: string, extra: Partial<DeviceClassDriver> = {}): DeviceClassDriver {
  return {
    id,
    manifest: { apiVersion: PLUGIN_API_VERSION, description: id },
    discover: (s: DeviceSource): Observable<readonly DeviceInfo[]> =>
      s.trees$.pipe(
        map((tree) =>
          tree.devices('test').map((r) => ({
            port: { devclass: id, backend: s.backend, portId: r.devpath.split('/').pop()! },
            deviceId: `${id}-device`,
            interfaces: [],
            data: {},
          })),
        ),
      ),
    ...extra,
  };
}

const moduleOf = (id: string, ...drivers: DeviceClassDriver[]): DevgateModule => ({
  id,
  register: (registry) => {
    for (const d of drivers) registry.registerDriver(d);
    return { dispose() {} };
  },
});
const pkg = (specifier: string) => ({ kind: 'package' as const, specifier });
const classes = (kernel: Kernel) =>
  [
    ...new Set(
      kernel
        .start()
        .list()
        .map((d) => d.port.devclass),
    ),
  ].sort();

describe('Kernel: isolated modules (third-party driver packages)', () => {
  it('refuses a module whose register throws, withdraws what it registered, and runs the others', () => {
    const kernel = new Kernel().load(moduleOf('driver-good', driver('good')));
    kernel.registerSource(source());
    const status = kernel.loadIsolated(
      {
        id: 'driver-broken',
        register: (registry) => {
          registry.registerDriver(driver('half'));
          throw new Error('boom');
        },
      },
      pkg('@acme/broken'),
    );
    expect(status.state).toBe('refused');
    expect(status.error?.code).toBe('DG_MODULE_LOAD_FAILED');
    expect(status.error?.message).toContain('@acme/broken');
    expect(status.error?.message).toContain('boom');
    expect(classes(kernel)).toEqual(['good']);
    kernel.dispose();
  });

  it('refuses a driver for another plugin API version, naming its package', () => {
    const kernel = new Kernel();
    kernel.registerSource(source());
    const old = driver('old', { manifest: { apiVersion: 99, description: 'from the future' } });
    const status = kernel.loadIsolated(moduleOf('driver-old', old), pkg('@acme/old'));
    expect(status.error?.code).toBe('DG_INCOMPATIBLE_DRIVER');
    expect(status.error?.message).toBe(
      "package '@acme/old': driver 'old' targets plugin API 99, this kernel provides 1",
    );
    expect(classes(kernel)).toEqual([]);
    kernel.dispose();
  });

  it('refuses a duplicate class id; the first driver keeps its class', () => {
    const kernel = new Kernel().load(moduleOf('driver-block', driver('block')));
    kernel.registerSource(source());
    const impostor = driver('block', { discover: () => new BehaviorSubject([]) });
    const status = kernel.loadIsolated(moduleOf('driver-impostor', impostor), pkg('@acme/impostor'));
    expect(status.error?.code).toBe('DG_DUPLICATE_DRIVER');
    expect(
      kernel
        .start()
        .list()
        .map((d) => d.deviceId),
    ).toEqual(['block-device']);
    kernel.dispose();
  });

  it('refuses a module whose dependency is missing at start, and those that depended on it', () => {
    const kernel = new Kernel().load(moduleOf('driver-usb', driver('usb')));
    kernel.registerSource(source());
    kernel.loadIsolated(
      moduleOf('a', driver('a', { manifest: { apiVersion: 1, description: 'a', dependsOn: ['pci'] } })),
      pkg('a'),
    );
    kernel.loadIsolated(
      moduleOf('b', driver('b', { manifest: { apiVersion: 1, description: 'b', dependsOn: ['a', 'usb'] } })),
      pkg('b'),
    );
    expect(classes(kernel)).toEqual(['usb']);
    const byId = Object.fromEntries(kernel.modules().map((m) => [m.id, m]));
    expect(byId.a.error?.code).toBe('DG_MISSING_DEPENDENCY');
    expect(byId.b.error?.message).toBe("package 'b': driver 'b' depends on 'a', which is not registered");
    expect(byId['driver-usb'].state).toBe('loaded');
    kernel.dispose();
  });

  it('still throws for a built-in module with a missing dependency (the build is wrong)', () => {
    const kernel = new Kernel().load(
      moduleOf('x', driver('x', { manifest: { apiVersion: 1, description: '', dependsOn: ['y'] } })),
    );
    expect(() => kernel.start()).toThrow(expect.objectContaining({ code: 'DG_MISSING_DEPENDENCY' }));
  });
});

describe('Kernel: the container is real', () => {
  it('starts with what is registered in its container, not only what went through register*', () => {
    const kernel = new Kernel().load(moduleOf('driver-a', driver('a')));
    kernel.container.register(DeviceSource, { useValue: source('sys-usb') });
    expect(
      kernel
        .start()
        .list()
        .map((d) => d.port.backend),
    ).toEqual(['sys-usb']);
    kernel.dispose();
  });

  it('gives modules what devgate provides; a test swaps it; a missing one is DG_NOT_PROVIDED', () => {
    const kernel = new Kernel();
    const lines: unknown[] = [];
    kernel.container.register(Clock, { useValue: { now: () => 42 } });
    kernel.container.register(Logger, {
      useValue: { debug() {}, info: (m: string, f?: object) => lines.push([m, f]), warn() {}, error() {} },
    });
    let seen: number | undefined;
    let notProvided: DevgateError | undefined;
    kernel.load({
      id: 'driver-clocked',
      register: (registry) => {
        seen = registry.resolve(Clock).now();
        registry.resolve(Logger).info('hello', { n: 1 });
        try {
          registry.resolve(SysfsReader);
        } catch (error) {
          notProvided = error as DevgateError;
        }
        return { dispose() {} };
      },
    });
    expect(seen).toBe(42);
    expect(lines).toEqual([['hello', { module: 'driver-clocked', n: 1 }]]);
    expect(notProvided?.code).toBe('DG_NOT_PROVIDED');
    expect(notProvided?.message).toBe(
      "module 'driver-clocked' asked for devgate.SysfsReader, which nothing provides in this kernel",
    );
  });

  it('asks sources to read the subsystems its drivers name', () => {
    const kernel = new Kernel();
    const asked: string[][] = [];
    kernel.registerSource(source('dom0', { readSubsystems: (s) => asked.push([...s]) }));
    kernel.registerDriver(driver('serial', { manifest: { apiVersion: 1, description: '', subsystems: ['tty'] } }));
    kernel.registerDriver(
      driver('other', { manifest: { apiVersion: 1, description: '', subsystems: ['tty', 'sound'] } }),
    );
    kernel.start();
    expect(asked).toEqual([['sound', 'tty']]);
    kernel.dispose();
  });
});

describe('DeviceManager: attach kinds', () => {
  function setup(kinds: readonly string[] | undefined, routes?: (kind: string) => string | undefined) {
    const touched: string[] = [];
    const connector: Connector = {
      id: 'hv',
      ...(kinds ? { attachKinds: kinds } : {}),
      manages: () => true,
      domains: () => ['work'],
      isRunning: async () => {
        touched.push('isRunning');
        return true;
      },
      attach: async (frontend, port, spec, deviceId) => {
        touched.push(`attach:${spec.kind}`);
        return { port, frontend, deviceId, options: spec.options };
      },
      detach: async () => undefined,
      attachments: async () => [],
      dispose() {},
    };
    const kernel = new Kernel();
    kernel.registerSource(
      source('dom0', {
        dataPath: async (_d: DeviceInfo, spec: AttachSpec) => {
          touched.push('dataPath');
          return spec;
        },
        ...(routes ? { routesKind: routes } : {}),
      }),
    );
    kernel.registerDriver(driver('serial', { attachSpec: () => ({ kind: 'qemu-device', params: {}, options: {} }) }));
    kernel.registerPolicyHook({ id: 'hook', preAttach: () => (touched.push('hook'), { verdict: 'allow' }) });
    kernel.registerConnector(connector);
    const manager = kernel.start();
    const attach = () =>
      manager.attach({ frontend: 'work', port: { devclass: 'serial', backend: 'dom0', portId: 'one' } });
    return { kernel, touched, attach };
  }

  it('refuses a kind the connector does not perform, before any hook, backend or hypervisor is touched', async () => {
    const { kernel, touched, attach } = setup(['block', 'usb-host']);
    const error = (await attach().catch((e: unknown) => e)) as DevgateError;
    expect(error.code).toBe('DG_UNSUPPORTED_ATTACH_KIND');
    expect(error.message).toBe(
      "Device dom0:one cannot be attached to work: hv cannot perform 'qemu-device' attachments; nothing was touched",
    );
    expect(error.hint).toBe('hv performs: block, usb-host');
    expect(touched).toEqual([]);
    kernel.dispose();
  });

  it('checks the kind the backend routes it to', async () => {
    const { kernel, touched, attach } = setup(['block', 'qemu-device'], (kind) =>
      kind === 'qemu-device' ? 'usb-redir' : kind,
    );
    expect(await attach().catch((e: DevgateError) => e.code)).toBe('DG_UNSUPPORTED_ATTACH_KIND');
    expect(touched).toEqual([]);
    kernel.dispose();
  });

  it('performs a declared kind (and any kind for a connector that declares none)', async () => {
    for (const kinds of [['qemu-device'], undefined]) {
      const { kernel, touched, attach } = setup(kinds);
      await attach();
      expect(touched).toEqual(['isRunning', 'hook', 'dataPath', 'attach:qemu-device']);
      kernel.dispose();
    }
  });
});

describe('loadDriverPackages: packages found as npm finds them', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-modules-'));
    const write = (name: string, main: string, json: Record<string, unknown> = {}) => {
      const root = path.join(dir, 'node_modules', name);
      fs.mkdirSync(root, { recursive: true });
      fs.writeFileSync(
        path.join(root, 'package.json'),
        JSON.stringify({ name, version: '1.2.3', main: 'index.js', ...json }),
      );
      fs.writeFileSync(path.join(root, 'index.js'), main);
    };
    write('@acme/throws', "throw new Error('cannot start');");
    write('@acme/empty', 'module.exports = { hello: 1 };');
    write(
      '@acme/good',
      `exports.devgateModule = { id: 'driver-good', register: (r) => r.registerDriver({
         id: 'good', manifest: { apiVersion: 1, description: 'good' },
         discover: (s) => ({ subscribe: (o) => { (o.next ? o.next.bind(o) : o)([]); return { unsubscribe() {} }; } }),
       }) };`,
    );
    fs.mkdirSync(path.join(dir, 'local'));
    fs.writeFileSync(
      path.join(dir, 'local', 'index.js'),
      "module.exports = { id: 'driver-local', register: (r) => r.registerDriver({ id: 'local', manifest: { apiVersion: 1, description: 'l' }, discover: () => ({ subscribe: () => ({ unsubscribe() {} }) }) }) };",
    );
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('loads what it finds, and refuses the rest with coded errors that name each package', () => {
    const kernel = new Kernel();
    const statuses = loadDriverPackages(
      kernel,
      ['@acme/good', './local', '@acme/missing', '@acme/throws', '@acme/empty', 'Not A Name'].map((specifier) => ({
        specifier,
        from: dir,
      })),
    );
    expect(statuses.map((s) => [s.id, s.state, s.error?.code])).toEqual([
      ['driver-good', 'loaded', undefined],
      ['driver-local', 'loaded', undefined],
      ['@acme/missing', 'refused', 'DG_MODULE_NOT_FOUND'],
      ['@acme/throws', 'refused', 'DG_MODULE_LOAD_FAILED'],
      ['@acme/empty', 'refused', 'DG_MODULE_LOAD_FAILED'],
      ['Not A Name', 'refused', 'DG_MODULE_NOT_FOUND'],
    ]);
    expect(statuses[0].origin).toEqual({
      kind: 'package',
      specifier: '@acme/good',
      name: '@acme/good',
      version: '1.2.3',
      path: fs.realpathSync(path.join(dir, 'node_modules/@acme/good/index.js')),
    });
    expect(statuses[3].error?.message).toBe(
      "driver package '@acme/throws' was not loaded: it threw while loading: cannot start",
    );
    expect(statuses[2].error?.message).toContain(`'@acme/missing' cannot be found from ${dir}`);
    expect(kernel.start().drivers.map((d) => d.id)).toEqual(['good', 'local']);
    kernel.dispose();
  });
});
