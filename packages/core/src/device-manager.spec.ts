import { BehaviorSubject, map } from 'rxjs';
import { type DeviceInfo, type Port, portKey } from './device-model';
import { DevgateError } from './errors';
import { HostTree } from './host-tree';
import { Kernel } from './kernel';
import {
  type AttachSpec,
  type Connector,
  type DeviceClassDriver,
  type DeviceSource,
  type HypervisorAttachment,
  PLUGIN_API_VERSION,
} from './plugin-api';

// The kernel's invariants, with an in-memory hypervisor. The same flows run against real QEMU in
// @devgate/backend-qemu and the CLI's tests.

class MemoryConnector implements Connector {
  readonly id = 'memory';
  readonly attached = new Map<string, HypervisorAttachment>();
  running = new Set(['work', 'personal']);
  gate?: Promise<void>;
  manages = (domain: string) => ['work', 'personal', 'halted'].includes(domain);
  domains = () => ['work', 'personal', 'halted'];
  isRunning = async (domain: string) => this.running.has(domain);
  async attach(frontend: string, port: Port, spec: AttachSpec) {
    await this.gate;
    const result = { port, frontend, options: spec.options };
    this.attached.set(portKey(port), result);
    return result;
  }
  async detach(_frontend: string, port: Port) {
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

function setup(initial: DeviceInfo[]) {
  const devices = new BehaviorSubject<DeviceInfo[]>(initial);
  const source: DeviceSource = {
    id: 'test',
    backend: 'dom0',
    hotplug: 'static',
    trees$: new BehaviorSubject(new HostTree([])),
    dispose: () => undefined,
  };
  const driver: DeviceClassDriver = {
    id: 'block',
    manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
    discover: () => devices.pipe(map((list) => list)),
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
    manager.events$.subscribe((e) => e.type !== 'driver-fault' && events.push(`${e.type}:${e.device.port.portId}`));
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
    manager.events$.subscribe((e) => e.type !== 'driver-fault' && seen.push(`${e.type}:${e.device.port.portId}`));
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
