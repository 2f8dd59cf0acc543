import { BehaviorSubject, Subject, map } from 'rxjs';
import { type DeviceInfo, type Port, portKey } from './device-model';
import { driverReport } from './driver-report';
import { DevgateError, DriverContractError, Errors } from './errors';
import { HostTree } from './host-tree';
import { Kernel } from './kernel';
import {
  type AttachSpec,
  type Connector,
  type DeviceClassDriver,
  type DeviceSource,
  type DomainLifecycleEvent,
  type HypervisorAttachment,
  Logger,
  PLUGIN_API_VERSION,
  type PolicyHook,
} from './plugin-api';
import { trusted } from './sanitize';

// The kernel's invariants, with an in-memory hypervisor. The same flows run against real QEMU in
// @devgate/backend-qemu and the CLI's tests.

class MemoryConnector implements Connector {
  readonly id = 'memory';
  readonly attached = new Map<string, HypervisorAttachment>();
  readonly lifecycle$ = new Subject<DomainLifecycleEvent>();
  running = new Set(['work', 'personal']);
  gate?: Promise<void>;
  detachGate?: Promise<void>;
  /** One gate per detach call, in order, before `detachGate`. */
  detachGates: Promise<void>[] = [];
  manages = (domain: string) => ['work', 'personal', 'halted'].includes(domain);
  domains = () => ['work', 'personal', 'halted'];
  isRunning = async (domain: string) => this.running.has(domain);
  async attach(frontend: string, port: Port, spec: AttachSpec, deviceId: string) {
    await this.gate;
    const result = { port, frontend, deviceId, options: spec.options };
    this.attached.set(portKey(port), result);
    return result;
  }
  async detach(_frontend: string, port: Port) {
    await (this.detachGates.shift() ?? this.detachGate);
    this.attached.delete(portKey(port));
  }
  attachments = async () => [...this.attached.values()];
  dispose() {}
}

const dev = (portId: string, parent?: string, extra: Partial<DeviceInfo> = {}): DeviceInfo => ({
  port: { devclass: 'block', backend: 'dom0', portId },
  deviceId: `id-${portId}`,
  interfaces: ['b******'],
  parent: parent ? { devclass: 'block', backend: 'dom0', portId: parent } : undefined,
  data: {},
  ...extra,
});

function setup(initial: DeviceInfo[], { recorded = false } = {}) {
  const devices = new BehaviorSubject<DeviceInfo[]>(initial);
  const source: DeviceSource = {
    id: recorded ? 'recording:laptop.umockdev' : 'test',
    backend: 'dom0',
    hotplug: 'static',
    trees$: new BehaviorSubject(new HostTree([])),
    ...(recorded ? {} : { dataPath: async (_device: DeviceInfo, spec: AttachSpec) => spec }),
    dispose: () => undefined,
  };
  const driver: DeviceClassDriver = {
    id: 'block',
    manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
    discover: () => devices.pipe(map((list) => list.filter((d) => d.port.devclass === 'block'))),
    attachSpec: (device, options) => {
      if (options['read-only'] === 'no' && device.data['read-only']) {
        throw new DevgateError('DG_READ_ONLY_DEVICE', 'This device can be attached only read-only');
      }
      return { kind: 'block', params: {}, options: { 'read-only': options['read-only'] ?? 'no' } };
    },
  };
  const connector = new MemoryConnector();
  const kernel = new Kernel();
  kernel.registerDriver(driver);
  // Each driver lists the devices of its own class from the one test list.
  kernel.registerDriver({
    id: 'usb',
    manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
    discover: () => devices.pipe(map((list) => list.filter((d) => d.port.devclass === 'usb'))),
    attachSpec: () => ({ kind: 'usb-host', params: {}, options: {} }),
  });
  kernel.registerSource(source);
  kernel.registerConnector(connector);
  const manager = kernel.start();
  const port = (portId: string): Port => ({ devclass: 'block', backend: 'dom0', portId });
  return { devices, connector, kernel, manager, port };
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return (error as DevgateError).code;
  }
  return 'resolved';
}

describe('DeviceManager attach and detach', () => {
  it('attaches, shows the attachment, emits attached, and detaches', async () => {
    const { manager, port, connector, kernel } = setup([dev('sdb'), dev('sdb1', 'sdb')]);
    const events: string[] = [];
    manager.events$.subscribe((e) => 'device' in e && events.push(`${e.type}:${e.device.port.portId}`));
    const result = await manager.attach({ frontend: 'work', port: port('sdb1') });
    expect(result.attachment).toEqual({ frontend: 'work', options: { 'read-only': 'no' } });
    expect(connector.attached.size).toBe(1);
    await manager.detach('work', port('sdb1'));
    expect(manager.get(port('sdb1'))!.attachment).toBeUndefined();
    expect(connector.attached.size).toBe(0);
    expect(events).toEqual(['attached:sdb1', 'detached:sdb1']);
    kernel.dispose();
  });

  it('refuses a disk while its partition is attached, and the reverse, changing nothing', async () => {
    const { manager, port, connector, kernel } = setup([dev('sdb'), dev('sdb1', 'sdb'), dev('sdb2', 'sdb')]);
    await manager.attach({ frontend: 'work', port: port('sdb1') });
    expect(await codeOf(manager.attach({ frontend: 'personal', port: port('sdb') }))).toBe('DG_OVERLAP');
    // Sibling partitions are separate resources.
    await manager.attach({ frontend: 'personal', port: port('sdb2') });
    await manager.detach('work', port('sdb1'));
    await manager.detach('personal', port('sdb2'));
    await manager.attach({ frontend: 'work', port: port('sdb') });
    expect(await codeOf(manager.attach({ frontend: 'personal', port: port('sdb1') }))).toBe('DG_OVERLAP');
    expect([...connector.attached.keys()]).toEqual(['block:dom0:sdb']);
    kernel.dispose();
  });

  it('refuses the same device twice, to this or another VM', async () => {
    const { manager, port, kernel } = setup([dev('sdb')]);
    await manager.attach({ frontend: 'work', port: port('sdb') });
    expect(await codeOf(manager.attach({ frontend: 'work', port: port('sdb') }))).toBe('DG_ALREADY_ATTACHED');
    expect(await codeOf(manager.attach({ frontend: 'personal', port: port('sdb') }))).toBe('DG_ALREADY_ATTACHED');
    kernel.dispose();
  });

  it('lets exactly one of many concurrent attaches win', async () => {
    const { manager, port, connector, kernel } = setup([dev('sdb'), dev('sdb1', 'sdb')]);
    let open!: () => void;
    connector.gate = new Promise((resolve) => (open = resolve));
    const attempts = Array.from({ length: 20 }, (_, i) =>
      codeOf(manager.attach({ frontend: i % 2 ? 'work' : 'personal', port: port(i % 3 ? 'sdb' : 'sdb1') })),
    );
    open();
    const codes = await Promise.all(attempts);
    expect(codes.filter((c) => c === 'resolved')).toHaveLength(1);
    expect(codes.filter((c) => c !== 'resolved').every((c) => c.startsWith('DG_'))).toBe(true);
    expect(connector.attached.size).toBe(1);
    kernel.dispose();
  });

  it('checks identity, use in the backend, read-only, the frontend, in that order', async () => {
    const { manager, port, connector, kernel } = setup([
      dev('sdb'),
      dev('sdc', undefined, { hiddenReason: 'mounted' }),
      dev('sr0', undefined, { data: { 'read-only': true } }),
    ]);
    expect(await codeOf(manager.attach({ frontend: 'work', port: port('sdz') }))).toBe('DG_UNKNOWN_DEVICE');
    expect(await codeOf(manager.attach({ frontend: 'work', port: port('sdb'), deviceId: 'other' }))).toBe(
      'DG_UNRECOGNIZED_IDENTITY',
    );
    expect(await codeOf(manager.attach({ frontend: 'work', port: port('sdc') }))).toBe('DG_DEVICE_IN_USE');
    expect(await codeOf(manager.attach({ frontend: 'work', port: port('sr0'), options: { 'read-only': 'no' } }))).toBe(
      'DG_READ_ONLY_DEVICE',
    );
    expect(await codeOf(manager.attach({ frontend: 'nosuch', port: port('sdb') }))).toBe('DG_NO_CONNECTOR');
    expect(await codeOf(manager.attach({ frontend: 'halted', port: port('sdb') }))).toBe('DG_DOMAIN_NOT_RUNNING');
    expect(await codeOf(manager.attach({ frontend: 'work', port: { ...port('sdb'), backend: 'sys-usb' } }))).toBe(
      'DG_NO_SUCH_BACKEND',
    );
    expect(connector.attached.size).toBe(0);
    kernel.dispose();
  });

  it('detaches a device that vanished while attached (surprise removal)', async () => {
    const { manager, port, connector, devices, kernel } = setup([dev('sdb'), dev('sdb1', 'sdb')]);
    await manager.attach({ frontend: 'work', port: port('sdb1') });
    const seen: string[] = [];
    manager.events$.subscribe((e) => 'device' in e && seen.push(`${e.type}:${e.device.port.portId}`));
    devices.next([]);
    await new Promise((r) => setImmediate(r));
    expect(connector.attached.size).toBe(0);
    expect(seen).toEqual(expect.arrayContaining(['detached:sdb1', 'removed:sdb1', 'removed:sdb']));
    expect(seen.indexOf('detached:sdb1')).toBeLessThan(seen.indexOf('removed:sdb1'));
    kernel.dispose();
  });

  it('reads attachments back from the hypervisor, and undoes those whose device is gone', async () => {
    const { manager, port, connector, kernel } = setup([dev('sdb')]);
    connector.attached.set('block:dom0:sdb', { port: port('sdb'), frontend: 'work', options: { x: '1' } });
    connector.attached.set('block:dom0:gone', { port: port('gone'), frontend: 'work', options: {} });
    await manager.syncAttachments();
    expect(manager.get(port('sdb'))!.attachment).toEqual({ frontend: 'work', options: { x: '1' } });
    expect(connector.attached.has('block:dom0:gone')).toBe(false);
    expect(await codeOf(manager.detach('personal', port('sdb')))).toBe('DG_NOT_ATTACHED');
    kernel.dispose();
  });

  it('detaches nothing where the devices were not read whole; an unlisted device holds its port', async () => {
    const { manager, port, connector, kernel } = setup([dev('sdb')]);
    connector.attached.set('block:dom0:sdb', { port: port('sdb'), frontend: 'work', options: {} });
    connector.attached.set('block:dom0:gone', { port: port('gone'), frontend: 'work', options: {} });
    connector.attached.set('block:dom0:sdb9', {
      port: port('sdb9'),
      frontend: 'work',
      options: {},
      deviceId: 'other',
    });
    await manager.syncAttachments({ complete: () => false });
    expect(manager.get(port('sdb'))!.attachment).toEqual({ frontend: 'work', options: {} });
    expect([...connector.attached.keys()].sort()).toEqual(['block:dom0:gone', 'block:dom0:sdb', 'block:dom0:sdb9']);
    expect(manager.list({ includeHidden: true }).map((d) => d.port.portId)).toEqual(['sdb']);
    // The attachment whose device is not listed is known: it can be detached by name.
    expect(await manager.detach('work', port('gone'))).toEqual([port('gone')]);
    expect(connector.attached.has('block:dom0:gone')).toBe(false);
    kernel.dispose();
  });

  it('detaches nothing of a class whose driver is not loaded', async () => {
    const { manager, connector, kernel } = setup([dev('sdb')]);
    const serial = { devclass: 'serial', backend: 'dom0', portId: 'ttyUSB0' };
    connector.attached.set('serial:dom0:ttyUSB0', { port: serial, frontend: 'work', options: {} });
    await manager.syncAttachments();
    expect(connector.attached.has('serial:dom0:ttyUSB0')).toBe(true);
    kernel.dispose();
  });

  it('undoes an attach whose device was pulled while it ran', async () => {
    const { manager, port, connector, devices, kernel } = setup([dev('sdb')]);
    let open!: () => void;
    connector.gate = new Promise((resolve) => (open = resolve));
    const attaching = codeOf(manager.attach({ frontend: 'work', port: port('sdb') }));
    await new Promise((r) => setImmediate(r));
    devices.next([]);
    open();
    expect(await attaching).toBe('DG_DEVICE_GONE');
    expect(connector.attached.size).toBe(0);
    kernel.dispose();
  });
});

describe('DeviceManager: a device pulled while a user detaches it', () => {
  it('stays in flight until both detaches are over: nothing is attached over the second', async () => {
    const { manager, port, connector, devices, kernel } = setup([dev('sdb')]);
    await manager.attach({ frontend: 'work', port: port('sdb') });
    let userDone!: () => void;
    let reclaimDone!: () => void;
    connector.detachGates = [new Promise((r) => (userDone = r)), new Promise((r) => (reclaimDone = r))];
    const detaching = manager.detach('work', port('sdb'));
    await new Promise((r) => setImmediate(r));
    devices.next([]); // pulled: devgate's own detach starts
    await new Promise((r) => setImmediate(r));
    userDone();
    expect(await detaching).toEqual([port('sdb')]);
    devices.next([dev('sdb')]); // plugged back while the hypervisor still lets go of it
    expect(await codeOf(manager.attach({ frontend: 'personal', port: port('sdb') }))).toBe('DG_ATTACH_IN_PROGRESS');
    reclaimDone();
    await new Promise((r) => setImmediate(r));
    expect(await codeOf(manager.attach({ frontend: 'personal', port: port('sdb') }))).toBe('resolved');
    kernel.dispose();
  });
});

describe('DeviceManager: backends that come and go while it runs', () => {
  it('lists a backend added after start, and withdrawing it detaches what of it was attached', async () => {
    // A driver that lists each backend's own devices, as every real driver does.
    const perBackend = new Map<string, BehaviorSubject<DeviceInfo[]>>();
    const stick = (backend: string): DeviceInfo => ({
      ...dev('sda'),
      port: { devclass: 'block', backend, portId: 'sda' },
    });
    const source = (backend: string): DeviceSource => {
      perBackend.set(backend, new BehaviorSubject([stick(backend)]));
      return {
        id: `test:${backend}`,
        backend,
        hotplug: 'static',
        trees$: new BehaviorSubject(new HostTree([])),
        dataPath: async (_device: DeviceInfo, spec: AttachSpec) => spec,
        dispose: () => undefined,
      };
    };
    const kernel = new Kernel();
    kernel.registerDriver({
      id: 'block',
      manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
      discover: (s) => perBackend.get(s.backend)!,
      attachSpec: () => ({ kind: 'block', params: {}, options: {} }),
    });
    kernel.registerSource(source('dom0'));
    const connector = new MemoryConnector();
    kernel.registerConnector(connector);
    const manager = kernel.start();
    try {
      const added = manager.addSource(source('sys-usb'));
      expect(manager.list().map((d) => `${d.port.backend}:${d.port.portId}`)).toEqual(['dom0:sda', 'sys-usb:sda']);
      expect(manager.domains()).toContain('sys-usb');
      expect(() => manager.addSource(source('sys-usb'))).toThrow(
        expect.objectContaining({ code: 'DG_BACKEND_EXISTS' }),
      );

      const port = { devclass: 'block', backend: 'sys-usb', portId: 'sda' };
      await manager.attach({ frontend: 'work', port });
      const ended = new Promise((resolve) => manager.once('attachment-ended', resolve));
      added.dispose();
      expect(await ended).toMatchObject({ port, frontend: 'work', reason: 'device-removed', outcome: 'ok' });
      expect(connector.attached.size).toBe(0);
      expect(manager.list().map((d) => `${d.port.backend}:${d.port.portId}`)).toEqual(['dom0:sda']);
      expect(await codeOf(manager.attach({ frontend: 'work', port }))).toBe('DG_NO_SUCH_BACKEND');
      // Its stream is no longer read: a late snapshot changes nothing.
      perBackend.get('sys-usb')!.next([stick('sys-usb')]);
      expect(manager.list()).toHaveLength(1);
    } finally {
      kernel.dispose();
    }
  });
});

describe('DeviceManager: the promises it keeps', () => {
  const usbStick = (): DeviceInfo[] => [
    { ...dev('1-2'), port: { devclass: 'usb', backend: 'dom0', portId: '1-2' }, interfaces: ['u080650'] },
    dev('sdb', undefined, { parent: { devclass: 'usb', backend: 'dom0', portId: '1-2' } }),
    dev('sdb1', 'sdb'),
  ];
  const ended = (manager: ReturnType<typeof setup>['manager']) => {
    const seen: string[] = [];
    manager.events$.subscribe((e) => {
      if (e.type === 'attachment-ended') seen.push(`${e.port.portId}@${e.frontend}:${e.reason}:${e.outcome}`);
    });
    return seen;
  };

  it('ends every attachment of a frontend that stops, and the device is free at once', async () => {
    const { manager, port, connector, kernel } = setup([dev('sdb'), dev('sdc')]);
    const seen = ended(manager);
    await manager.attach({ frontend: 'work', port: port('sdb') });
    await manager.attach({ frontend: 'personal', port: port('sdc') });
    connector.running.delete('work');
    connector.lifecycle$.next({ type: 'stopped', domain: 'work' });
    expect(manager.get(port('sdb'))?.attachment).toBeUndefined();
    expect(manager.get(port('sdc'))?.attachment?.frontend).toBe('personal');
    expect(seen).toEqual(['sdb@work:frontend-stopped:ok']);
    await manager.attach({ frontend: 'personal', port: port('sdb') });
    kernel.dispose();
  });

  it('holds a device attached behind its back for that frontend, until the frontend lets go of it', async () => {
    const { manager, port, connector, kernel } = setup([dev('sdb'), dev('sdb1', 'sdb')]);
    const attached: string[] = [];
    manager.on('attached', (e) => attached.push(`${e.device.port.portId}@${e.frontend}`));
    const options = { 'read-only': 'yes', 'attached-by': 'libvirt' };
    connector.lifecycle$.next({
      type: 'device-added',
      domain: 'work',
      attachment: { port: port('sdb'), frontend: 'work', options },
    });
    expect(attached).toEqual(['sdb@work']);
    expect(manager.get(port('sdb'))?.attachment).toMatchObject({ frontend: 'work', options });
    // Nothing else gets it, or a part of it, meanwhile.
    expect(await codeOf(manager.attach({ frontend: 'personal', port: port('sdb') }))).toBe('DG_ALREADY_ATTACHED');
    expect(await codeOf(manager.attach({ frontend: 'personal', port: port('sdb1') }))).toBe('DG_OVERLAP');
    // A device the backend does not list is not taken for one.
    connector.lifecycle$.next({
      type: 'device-added',
      domain: 'work',
      attachment: { port: port('sdz'), frontend: 'work', options },
    });
    expect(manager.get(port('sdz'))).toBeUndefined();
    connector.lifecycle$.next({ type: 'device-removed', domain: 'work', port: port('sdb') });
    expect(manager.get(port('sdb'))?.attachment).toBeUndefined();
    await manager.attach({ frontend: 'personal', port: port('sdb1') });
    kernel.dispose();
  });

  it('ends an attachment the frontend lost behind its back, and publishes domain states', async () => {
    const { manager, port, connector, kernel } = setup([dev('sdb')]);
    const seen = ended(manager);
    const states: string[] = [];
    manager.on('domain', (e) => states.push(`${e.domain}:${e.state}`));
    await manager.attach({ frontend: 'work', port: port('sdb') });
    connector.lifecycle$.next({ type: 'device-removed', domain: 'personal', port: port('sdb') });
    expect(manager.get(port('sdb'))?.attachment?.frontend).toBe('work'); // another domain's event
    connector.lifecycle$.next({ type: 'device-removed', domain: 'work', port: port('sdb') });
    connector.lifecycle$.next({ type: 'started', domain: 'halted' });
    expect(seen).toEqual(['sdb@work:removed-by-frontend:ok']);
    expect(states).toEqual(['halted:started']);
    kernel.dispose();
  });

  it('refuses any device of a recorded backend before touching a hypervisor', async () => {
    const { manager, port, connector, kernel } = setup([dev('sdb')], { recorded: true });
    expect(await codeOf(manager.attach({ frontend: 'work', port: port('sdb') }))).toBe('DG_NOT_ATTACHABLE');
    expect(connector.attached.size).toBe(0);
    kernel.dispose();
  });

  it('refuses a USB device whose partition is in use in its backend, naming it', async () => {
    const devices = usbStick();
    devices[2] = { ...devices[2], hiddenReason: 'mounted', inUse: true };
    const { manager, kernel } = setup(devices);
    const usb: Port = { devclass: 'usb', backend: 'dom0', portId: '1-2' };
    await expect(manager.attach({ frontend: 'work', port: usb })).rejects.toMatchObject({
      code: 'DG_DEVICE_IN_USE',
      message: expect.stringContaining('dom0:sdb1 is mounted'),
    });
    kernel.dispose();
  });

  it('refuses a USB device while its partition is attached elsewhere, and the other way round', async () => {
    const { manager, port, kernel } = setup(usbStick());
    const usb: Port = { devclass: 'usb', backend: 'dom0', portId: '1-2' };
    await manager.attach({ frontend: 'work', port: port('sdb1') });
    expect(await codeOf(manager.attach({ frontend: 'personal', port: usb }))).toBe('DG_OVERLAP');
    await manager.detach('work', port('sdb1'));
    await manager.attach({ frontend: 'personal', port: usb });
    expect(await codeOf(manager.attach({ frontend: 'work', port: port('sdb1') }))).toBe('DG_OVERLAP');
    kernel.dispose();
  });

  it('records the identity with the attachment, and a read-back drops another device in the port', async () => {
    const { manager, port, connector, devices, kernel } = setup([dev('sdb')]);
    const seen = ended(manager);
    await manager.attach({ frontend: 'work', port: port('sdb') });
    expect(connector.attached.get(portKey(port('sdb')))?.deviceId).toBe('id-sdb');
    devices.next([dev('sdb', undefined, { deviceId: 'another-stick' })]);
    await manager.syncAttachments();
    expect(manager.get(port('sdb'))?.attachment).toBeUndefined();
    expect(connector.attached.size).toBe(0);
    expect(seen).toEqual(['sdb@work:device-replaced:ok']);
    kernel.dispose();
  });

  it('refuses an attach naming a device that is no longer in the port', async () => {
    const { manager, port, kernel } = setup([dev('sdb', undefined, { deviceId: 'new-stick' })]);
    const request = { frontend: 'work', port: port('sdb'), deviceId: 'old-stick' };
    expect(await codeOf(manager.attach(request))).toBe('DG_UNRECOGNIZED_IDENTITY');
    kernel.dispose();
  });

  it('publishes the end of a surprise removal after the detach ran, with its real outcome', async () => {
    const { manager, port, connector, devices, kernel } = setup([dev('sdb'), dev('sdc')]);
    const seen = ended(manager);
    await manager.attach({ frontend: 'work', port: port('sdb') });
    let release!: () => void;
    connector.detachGate = new Promise((resolve) => (release = resolve));
    devices.next([dev('sdc')]);
    expect(manager.get(port('sdb'))).toBeUndefined();
    expect(seen).toEqual([]); // not before the hypervisor answered
    // Re-inserted before the hypervisor let go of it: not attached over its own detach.
    devices.next([dev('sdb'), dev('sdc')]);
    expect(await codeOf(manager.attach({ frontend: 'personal', port: port('sdb') }))).toBe('DG_ATTACH_IN_PROGRESS');
    release();
    await new Promise((resolve) => manager.once('attachment-ended', resolve));
    expect(seen).toEqual(['sdb@work:device-removed:ok']);

    await manager.attach({ frontend: 'work', port: port('sdc') });
    connector.detachGate = Promise.reject(new DevgateError('DG_DETACH_TIMEOUT', 'no DEVICE_DELETED'));
    connector.detachGate.catch(() => undefined);
    devices.next([]);
    await new Promise((resolve) => manager.once('attachment-ended', resolve));
    expect(seen[1]).toBe('sdc@work:device-removed:error');
    kernel.dispose();
  });
});

describe('DeviceManager: what a driver lists is checked before it is listed', () => {
  const serialPort = (portId: string, backend = 'dom0'): Port => ({ devclass: 'serial', backend, portId });
  const serial = (portId: string, extra: Partial<DeviceInfo> = {}): DeviceInfo => ({
    port: serialPort(portId),
    deviceId: `id-${portId}`,
    interfaces: ['uffffff'],
    data: {},
    ...extra,
  });
  const realKeyboard: DeviceInfo = {
    port: { devclass: 'usb', backend: 'dom0', portId: '1-1' },
    deviceId: '046d:c31c::u030101',
    name: trusted('Logitech keyboard'),
    interfaces: ['u030101'],
    data: {},
  };

  /** A well-behaved usb driver, and a serial driver that lists whatever the test gives it. */
  function setupSerial(initial: DeviceInfo[]) {
    const listed = new BehaviorSubject<DeviceInfo[]>(initial);
    const kernel = new Kernel();
    kernel.registerDriver({
      id: 'usb',
      manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
      discover: () => new BehaviorSubject([realKeyboard]),
    });
    // Loaded as a driver package is, so that `devgate drivers` has a row for it.
    kernel.loadIsolated(
      {
        id: 'driver-serial',
        register: (registry) =>
          registry.registerDriver({
            id: 'serial',
            manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
            discover: () => listed,
          }),
      },
      { kind: 'package', specifier: '@acme/devgate-driver-serial' },
    );
    kernel.registerSource({
      id: 'test',
      backend: 'dom0',
      hotplug: 'static',
      trees$: new BehaviorSubject(new HostTree([])),
      dispose: () => undefined,
    });
    const faults: string[] = [];
    const manager = kernel.start();
    manager.on('driver-fault', (e) => faults.push(`${e.driverId}@${e.sourceId}: ${e.error.message}`));
    const keys = () => manager.list({ includeHidden: true }).map((d) => portKey(d.port));
    return { listed, kernel, manager, faults, keys };
  }

  it('drops devices of another class or backend, bad interface codes, control characters and duplicate ports, and reports the driver', () => {
    const { listed, kernel, manager, faults, keys } = setupSerial([serial('ttyS0')]);
    listed.next([
      serial('ttyS0'),
      {
        ...serial('ttyUSB0'),
        port: { devclass: 'usb', backend: 'dom0', portId: '1-1' },
        name: trusted('fake keyboard'),
      },
      serial('ttyUSB1', { port: serialPort('ttyUSB1', 'sys-usb') }),
      serial('ttyUSB2', { interfaces: ['bogus'] }),
      serial('ttyUSB3', { name: trusted('\u001b[31mred alert') }),
      serial('ttyUSB4', { data: { warning: 'ok\u001b]0;title\u0007' } }),
      serial('ttyS0', { deviceId: 'another' }),
      serial('ttyACM0'),
    ]);
    // The good devices stay, the real USB keyboard is not shadowed.
    expect(keys().sort()).toEqual(['serial:dom0:ttyACM0', 'serial:dom0:ttyS0', 'usb:dom0:1-1']);
    expect(manager.get(realKeyboard.port)?.name).toBe('Logitech keyboard');
    expect(manager.get(serialPort('ttyS0'))?.deviceId).toBe('id-ttyS0');
    expect(manager.faults()).toEqual([
      expect.objectContaining({ driverId: 'serial', sourceId: 'test', error: expect.any(DriverContractError) }),
    ]);
    const message = manager.faults()[0].error.message;
    expect(message).toMatch(/^driver 'serial': /);
    for (const problem of [
      'usb:dom0:1-1 is of class usb',
      'serial:sys-usb:ttyUSB1 is of backend sys-usb',
      "serial:dom0:ttyUSB2 has an invalid interface code 'bogus'",
      'serial:dom0:ttyUSB3: its name is not plain text',
      'serial:dom0:ttyUSB4: its data.warning is not plain text',
      'serial:dom0:ttyS0 is listed twice',
    ]) {
      expect(message).toContain(problem);
    }
    expect(message).not.toContain('\u001b');
    expect(faults).toEqual([`serial@test: ${message}`]);
    // `devgate drivers` shows it, coded.
    expect(driverReport(kernel, manager).find((row) => row.class === 'serial')).toMatchObject({
      health: 'faulted',
      error: {
        code: 'DG_DRIVER_CONTRACT',
        message: expect.stringMatching(
          /^driver 'serial' failed on test: 6 devices it listed for dom0 left out: usb:dom0:1-1 is of class usb, not serial; /,
        ),
      },
    });
    kernel.dispose();
  });

  it('reports the same problem once, and clears the fault when the driver lists good devices again', () => {
    const bad = serial('ttyUSB2', { interfaces: ['bogus'] });
    const { listed, kernel, manager, faults, keys } = setupSerial([serial('ttyS0')]);
    for (let pass = 0; pass < 3; pass++) listed.next([serial('ttyS0'), bad]);
    expect(faults).toHaveLength(1);
    expect(keys()).toEqual(['usb:dom0:1-1', 'serial:dom0:ttyS0']);
    listed.next([serial('ttyS0'), serial('ttyUSB2')]);
    expect(manager.faults()).toEqual([]);
    expect(keys()).toEqual(['usb:dom0:1-1', 'serial:dom0:ttyS0', 'serial:dom0:ttyUSB2']);
    kernel.dispose();
  });

  it('takes a port listed again after it went for a new device, not for a duplicate', () => {
    const { listed, kernel, manager, keys } = setupSerial([serial('ttyS0'), serial('ttyUSB0')]);
    listed.next([serial('ttyS0')]);
    listed.next([serial('ttyS0'), serial('ttyUSB0')]);
    listed.next([serial('ttyUSB0'), serial('ttyS0')]);
    expect(manager.faults()).toEqual([]);
    expect(keys()).toEqual(['usb:dom0:1-1', 'serial:dom0:ttyS0', 'serial:dom0:ttyUSB0']);
    kernel.dispose();
  });

  it('checks each device object once: a hotplug pass hands back the same objects', () => {
    let reads = 0;
    const device = serial('ttyS0');
    const counted = Object.defineProperty({ ...device }, 'name', {
      enumerable: true,
      get: () => {
        reads++;
        return 'USB UART';
      },
    });
    const { listed, kernel, keys } = setupSerial([counted]);
    const afterFirst = reads;
    expect(afterFirst).toBeGreaterThan(0);
    for (let pass = 0; pass < 5; pass++) listed.next([counted, serial(`ttyUSB${pass}`)]);
    expect(reads).toBe(afterFirst);
    expect(keys()).toContain('serial:dom0:ttyS0');
    kernel.dispose();
  });
});

describe('DeviceManager: what driver and hook code gives back at attach', () => {
  function setupAttach(attachSpec: DeviceClassDriver['attachSpec'], hooks: PolicyHook[] = []) {
    const kernel = new Kernel();
    const logged: { message: string; fields?: Readonly<Record<string, unknown>> }[] = [];
    const log = {
      debug() {},
      info() {},
      warn() {},
      error: (message: string, fields?: Readonly<Record<string, unknown>>) => logged.push({ message, fields }),
    };
    kernel.container.register(Logger, { useValue: log });
    kernel.registerDriver({
      id: 'block',
      manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
      discover: () => new BehaviorSubject([dev('sdb')]),
      attachSpec,
    });
    kernel.registerSource({
      id: 'test',
      backend: 'dom0',
      hotplug: 'static',
      trees$: new BehaviorSubject(new HostTree([])),
      dataPath: async (_device: DeviceInfo, spec: AttachSpec) => spec,
      dispose: () => undefined,
    });
    for (const hook of hooks) kernel.registerPolicyHook(hook);
    const connector = new MemoryConnector();
    kernel.registerConnector(connector);
    const manager = kernel.start();
    const attach = () =>
      manager.attach({ frontend: 'work', port: { devclass: 'block', backend: 'dom0', portId: 'sdb' } });
    return { kernel, manager, connector, attach, logged };
  }

  it('refuses with DG_DRIVER_CONTRACT, naming the driver, when attachSpec throws an uncoded error', async () => {
    const { kernel, connector, attach } = setupAttach(() => {
      throw new Error('oops');
    });
    const error = (await attach().catch((e: unknown) => e)) as DriverContractError;
    expect(error).toBeInstanceOf(DriverContractError);
    expect(error.code).toBe('DG_DRIVER_CONTRACT');
    expect(error.message).toBe("driver 'block': attachSpec failed for dom0:sdb: oops");
    expect(connector.attached.size).toBe(0);
    kernel.dispose();
  });

  it('keeps the coded refusals of attachSpec (a bad option) as they are', async () => {
    const { kernel, attach } = setupAttach(() => {
      throw new DevgateError('DG_UNSUPPORTED_OPTION', 'Unsupported option x');
    });
    expect(await codeOf(attach())).toBe('DG_UNSUPPORTED_OPTION');
    kernel.dispose();
  });

  it('refuses with DG_DRIVER_CONTRACT when attachSpec returns no attach spec', async () => {
    for (const spec of [undefined, {}, { kind: 'block', params: {} }]) {
      const { kernel, connector, attach } = setupAttach(() => spec as AttachSpec);
      const error = (await attach().catch((e: unknown) => e)) as DriverContractError;
      expect(error).toBeInstanceOf(DriverContractError);
      expect(error.message).toBe("driver 'block': attachSpec returned no attach spec for dom0:sdb");
      expect(connector.attached.size).toBe(0);
      kernel.dispose();
    }
  });

  it('refuses with DG_DRIVER_CONTRACT, naming the hook, when preAttach throws an uncoded error', async () => {
    const spec = () => ({ kind: 'block', params: {}, options: {} });
    for (const preAttach of [
      () => {
        throw new Error('no \u001b[31mrules\u001b[0m\nfile');
      },
      async () => Promise.reject(new Error('no \u001b[31mrules\u001b[0m\nfile')),
    ]) {
      const { kernel, connector, attach } = setupAttach(spec, [{ id: 'usbguard', preAttach }]);
      const error = (await attach().catch((e: unknown) => e)) as DriverContractError;
      expect(error).toBeInstanceOf(DriverContractError);
      expect(error.code).toBe('DG_DRIVER_CONTRACT');
      expect(error.driverId).toBe('usbguard');
      expect(error.message).toBe("driver 'usbguard': preAttach failed for dom0:sdb: no rules file");
      expect(connector.attached.size).toBe(0);
      kernel.dispose();
    }
  });

  it('keeps the coded errors preAttach throws (a refusal of its own) as they are', async () => {
    const refusal = Errors.policyDenied({ device: 'dom0:sdb', frontend: 'work', reason: 'not on weekends' });
    const { kernel, connector, attach } = setupAttach(
      () => ({ kind: 'block', params: {}, options: {} }),
      [
        {
          id: 'calendar',
          preAttach: () => {
            throw refusal;
          },
        },
      ],
    );
    expect(await attach().catch((e: unknown) => e)).toBe(refusal);
    expect(connector.attached.size).toBe(0);
    kernel.dispose();
  });

  it('an onAttached hook that fails does not fail an attach that succeeded: it is logged, as plain text', async () => {
    const { kernel, manager, connector, attach, logged } = setupAttach(
      () => ({ kind: 'block', params: {}, options: {} }),
      [
        {
          id: 'notifier',
          onAttached: () => {
            throw new Error('cannot notify');
          },
        },
        {
          id: 'async-notifier',
          onAttached: async () => Promise.reject(new Error('cannot \u001b[31mnotify\u001b[0m\nlater')),
        },
      ],
    );
    const attached = await attach();
    expect(attached.attachment?.frontend).toBe('work');
    expect(connector.attached.size).toBe(1);
    expect(manager.get(attached.port)?.attachment?.frontend).toBe('work');
    await new Promise((resolve) => setImmediate(resolve));
    expect(logged).toEqual([
      {
        message: 'a policy hook failed after an attach, which stands',
        fields: {
          code: 'DG_DRIVER_CONTRACT',
          hook: 'notifier',
          device: 'dom0:sdb',
          frontend: 'work',
          reason: 'onAttached failed: cannot notify',
        },
      },
      {
        message: 'a policy hook failed after an attach, which stands',
        fields: {
          code: 'DG_DRIVER_CONTRACT',
          hook: 'async-notifier',
          device: 'dom0:sdb',
          frontend: 'work',
          reason: 'onAttached failed: cannot notify later',
        },
      },
    ]);
    kernel.dispose();
  });
});
