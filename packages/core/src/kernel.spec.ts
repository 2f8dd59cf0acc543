import { BehaviorSubject, type Observable, map } from 'rxjs';
import { type DeviceInfo } from './device-model';
import { type DevgateError } from './errors';
import { HostTree, recordOf } from './host-tree';
import { Kernel } from './kernel';
import { type DeviceClassDriver, type DeviceSource, PLUGIN_API_VERSION } from './plugin-api';

class TestSource implements DeviceSource {
  readonly id = 'test';
  readonly hotplug = 'static';
  readonly trees = new BehaviorSubject(new HostTree([]));
  readonly trees$ = this.trees.asObservable();
  disposed = false;
  constructor(readonly backend = 'dom0') {}
  add(name: string) {
    const records = [...this.trees.value.devices(), recordOf(`/devices/virtual/test/${name}`, 'test', {})];
    this.trees.next(new HostTree(records));
  }
  dispose() {
    this.disposed = true;
  }
}

function driver(id: string, extra: Partial<DeviceClassDriver> = {}): DeviceClassDriver {
  return {
    id,
    manifest: { apiVersion: PLUGIN_API_VERSION, description: id },
    discover: (source: DeviceSource): Observable<readonly DeviceInfo[]> =>
      source.trees$.pipe(
        map((tree) =>
          tree.devices('test').map((r) => ({
            port: { devclass: id, backend: source.backend, portId: r.devpath.split('/').pop()! },
            deviceId: 'x',
            interfaces: [],
            data: {},
          })),
        ),
      ),
    ...extra,
  };
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return (error as DevgateError).code;
  }
  return undefined;
}

describe('Kernel', () => {
  it('refuses a second driver with the same id', () => {
    const kernel = new Kernel();
    kernel.registerDriver(driver('block'));
    expect(codeOf(() => kernel.registerDriver(driver('block')))).toBe('DG_DUPLICATE_DRIVER');
  });

  it('refuses a driver written for another plugin API version', () => {
    const kernel = new Kernel();
    const old = driver('old', { manifest: { apiVersion: 0, description: 'old' } });
    expect(codeOf(() => kernel.registerDriver(old))).toBe('DG_INCOMPATIBLE_DRIVER');
  });

  it('checks dependencies when it starts', () => {
    const kernel = new Kernel();
    kernel.registerDriver(driver('usb-block', { manifest: { apiVersion: 1, description: '', dependsOn: ['usb'] } }));
    expect(codeOf(() => kernel.start())).toBe('DG_MISSING_DEPENDENCY');
    kernel.registerDriver(driver('usb'));
    expect(() => kernel.start()).not.toThrow();
    kernel.dispose();
  });

  it('lists synchronously from a cache the streams keep fresh', () => {
    const kernel = new Kernel();
    const source = new TestSource();
    kernel.registerDriver(driver('test'));
    kernel.registerSource(source);
    const manager = kernel.start();
    expect(manager.list()).toEqual([]);
    const added: string[] = [];
    manager.on('added', (e) => added.push(e.device.port.portId));
    source.add('one');
    expect(manager.list().map((d) => d.port.portId)).toEqual(['one']);
    expect(added).toEqual(['one']);
    kernel.dispose();
    expect(source.disposed).toBe(true);
  });

  it('isolates a failing driver: the others keep reporting', () => {
    jest.useFakeTimers();
    const kernel = new Kernel();
    const source = new TestSource();
    let calls = 0;
    const broken = driver('broken', {
      discover: (s) =>
        s.trees$.pipe(
          map(() => {
            calls++;
            throw new Error('boom');
          }),
        ),
    });
    kernel.registerDriver(broken);
    kernel.registerDriver(driver('good'));
    kernel.registerSource(source);
    const manager = kernel.start();
    source.add('x');
    expect(manager.list().map((d) => `${d.port.devclass}:${d.port.portId}`)).toEqual(['good:x']);
    expect(manager.faults()).toEqual([expect.objectContaining({ driverId: 'broken', sourceId: 'test' })]);
    // It is retried with backoff rather than given up on.
    jest.advanceTimersByTime(1000);
    expect(calls).toBe(2);
    kernel.dispose();
    jest.useRealTimers();
  });
});
