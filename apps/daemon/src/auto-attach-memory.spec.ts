import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BehaviorSubject, Subject } from 'rxjs';
import {
  type AttachSpec,
  type Connector,
  type DeviceInfo,
  type DomainLifecycleEvent,
  Errors,
  type HypervisorAttachment,
  HostTree,
  Kernel,
  PLUGIN_API_VERSION,
  type Port,
  portKey,
  portLabel,
} from '@devgate/core';
import { DaemonEvents, DeviceService, SqliteStateStore } from '@devgate/service';
import { AskService } from './services/asks';
import { AutoAttach, RETRY_FIRST_MS, RETRY_MAX_MS } from './services/auto-attach';

// What auto-attach remembers: a person's detach, which stands (Qubes acts on an assignment when the
// device appears or the frontend starts, not in between), and a refusal, which is not tried (and
// audited) again on every pass. Real SQLite; devices, backend and hypervisor in memory; a clock of
// our own for the backoff.

const stick = (serial: string, portId = 'sdb'): DeviceInfo => ({
  port: { devclass: 'block', backend: 'dom0', portId },
  deviceId: `0781:5567:${serial}:b******`,
  interfaces: ['b******'],
  data: {},
});

class MemoryConnector implements Connector {
  readonly id = 'memory';
  readonly attached = new Map<string, HypervisorAttachment>();
  readonly running = new Set(['work', 'personal']);
  readonly lifecycle$ = new Subject<DomainLifecycleEvent>();
  attempts = 0;
  /** What the hypervisor answers an attach with, if not success. */
  refuse?: () => Error;
  manages = (domain: string) => domain === 'work' || domain === 'personal';
  domains = () => ['work', 'personal'];
  isRunning = async (domain: string) => this.running.has(domain);
  async attach(frontend: string, port: Port, spec: AttachSpec, deviceId: string) {
    this.attempts++;
    if (this.refuse) throw this.refuse();
    const attachment = { port, frontend, deviceId, options: spec.options };
    this.attached.set(portKey(port), attachment);
    return attachment;
  }
  async detach(_frontend: string, port: Port) {
    this.attached.delete(portKey(port));
  }
  attachments = async () => [...this.attached.values()];
  holder = (device: DeviceInfo) => this.attached.get(portKey(device.port))?.frontend;
  dispose() {}
}

let dir: string;
let cleanup: (() => void) | undefined;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-auto-attach-'))));
afterEach(() => {
  cleanup?.();
  cleanup = undefined;
  fs.rmSync(dir, { recursive: true, force: true });
});

function setup(initial: DeviceInfo[]) {
  const devices = new BehaviorSubject<DeviceInfo[]>(initial);
  const backend: { refuse?: () => Error } = {};
  const kernel = new Kernel();
  kernel.registerDriver({
    id: 'block',
    manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
    discover: () => devices,
    attachSpec: () => ({ kind: 'block', params: {}, options: {} }),
  });
  kernel.registerSource({
    id: 'test',
    backend: 'dom0',
    hotplug: 'static',
    trees$: new BehaviorSubject(new HostTree([])),
    dataPath: async (_device, spec) => {
      if (backend.refuse) throw backend.refuse();
      return spec;
    },
    dispose: () => undefined,
  });
  const connector = new MemoryConnector();
  kernel.registerConnector(connector);
  const manager = kernel.start();
  const store = new SqliteStateStore(path.join(dir, 'state.db'));
  const events = new DaemonEvents();
  const asks = new AskService(store, events, 60_000);
  const service = new DeviceService(manager, store, events);
  const clock = { now: 0 };
  const autoAttach = new AutoAttach(manager, store, asks, service, 60_000, () => clock.now);
  cleanup = () => {
    autoAttach.dispose();
    asks.dispose();
    kernel.dispose();
    store.dispose();
  };
  const assign = (frontend: string, device: DeviceInfo, mode: 'auto-attach' | 'ask-to-attach' = 'auto-attach') =>
    service.assign({ devclass: 'block', frontend, device: portLabel(device.port), only: 'port', mode }, 'alice');
  /** A person's detach, and whatever auto-attach does about it. */
  const detach = async (frontend: string, device: DeviceInfo) => {
    await service.detach({ devclass: 'block', frontend, device: portLabel(device.port) }, 'alice');
    await autoAttach.settled();
  };
  /** Every auto-attach tried, as its audit rows say. */
  const tried = () => store.audit.query({ action: 'auto-attach' }).map((e) => `${e.frontend} ${e.code ?? e.outcome}`);
  /** A periodic pass, now. */
  const pass = () => autoAttach.reconcile().then(() => autoAttach.settled());
  return { devices, backend, connector, store, events, asks, service, autoAttach, clock, assign, detach, tried, pass };
}

describe("a person's detach", () => {
  it('stands: neither the detach itself nor a later pass attaches the device to that frontend again', async () => {
    const { connector, autoAttach, assign, detach, tried, pass } = setup([stick('A')]);
    assign('work', stick('A'));
    autoAttach.start();
    await autoAttach.settled();
    expect(connector.holder(stick('A'))).toBe('work');

    await detach('work', stick('A'));
    expect(connector.holder(stick('A'))).toBeUndefined();
    await pass();
    expect(connector.holder(stick('A'))).toBeUndefined();
    expect(tried()).toEqual(['work ok']);
  });

  it('ends when the device is plugged again, or another device is in the port', async () => {
    const { devices, connector, autoAttach, assign, detach, pass } = setup([stick('A')]);
    assign('work', stick('A'));
    autoAttach.start();
    await autoAttach.settled();
    await detach('work', stick('A'));
    devices.next([]);
    devices.next([stick('A')]);
    await autoAttach.settled();
    expect(connector.holder(stick('A'))).toBe('work');

    await detach('work', stick('A'));
    devices.next([stick('B')]); // swapped faster than a listing: the same port, another device
    await pass();
    expect(connector.holder(stick('B'))).toBe('work');
  });

  it('ends when the frontend starts again', async () => {
    const { connector, autoAttach, assign, detach, pass } = setup([stick('A')]);
    assign('work', stick('A'));
    autoAttach.start();
    await autoAttach.settled();
    await detach('work', stick('A'));
    await pass();
    expect(connector.holder(stick('A'))).toBeUndefined();

    connector.lifecycle$.next({ type: 'started', domain: 'work' });
    await autoAttach.settled();
    expect(connector.holder(stick('A'))).toBe('work');
  });

  it('ends when the assignment is changed', async () => {
    const { service, connector, autoAttach, assign, detach, pass } = setup([stick('A')]);
    assign('work', stick('A'));
    autoAttach.start();
    await autoAttach.settled();
    await detach('work', stick('A'));
    service.unassign({ devclass: 'block', frontend: 'work', device: 'dom0:sdb', only: 'port' }, 'alice');
    service.assign({ devclass: 'block', frontend: 'work', device: 'dom0:sdb', mode: 'auto-attach' }, 'alice');
    await pass();
    expect(connector.holder(stick('A'))).toBe('work');
  });

  it('frees the device for the VM it is assigned to, when detached from another one', async () => {
    const { service, connector, autoAttach, assign, detach } = setup([stick('A')]);
    await service.attach({ devclass: 'block', frontend: 'personal', device: 'dom0:sdb' }, 'alice');
    assign('work', stick('A'));
    autoAttach.start();
    await autoAttach.settled();
    expect(connector.holder(stick('A'))).toBe('personal');

    await detach('personal', stick('A'));
    expect(connector.holder(stick('A'))).toBe('work');
  });

  it('counts one made outside devgate (the VM let go of the device) too', async () => {
    const { connector, autoAttach, assign, pass } = setup([stick('A')]);
    assign('work', stick('A'));
    autoAttach.start();
    await autoAttach.settled();
    connector.attached.clear();
    connector.lifecycle$.next({ type: 'device-removed', domain: 'work', port: stick('A').port });
    await pass();
    expect(connector.holder(stick('A'))).toBeUndefined();
  });

  it('is not what a frontend that stopped did: it gets the device again when it starts', async () => {
    const { connector, autoAttach, assign } = setup([stick('A')]);
    assign('work', stick('A'));
    autoAttach.start();
    await autoAttach.settled();
    connector.running.delete('work');
    connector.attached.clear();
    connector.lifecycle$.next({ type: 'stopped', domain: 'work' });
    await autoAttach.settled();
    expect(connector.holder(stick('A'))).toBeUndefined();

    connector.running.add('work');
    connector.lifecycle$.next({ type: 'started', domain: 'work' });
    await autoAttach.settled();
    expect(connector.holder(stick('A'))).toBe('work');
  });
});

describe('a failed auto-attach', () => {
  const notAttachable = () => Errors.notAttachable({ device: 'dom0:sdb', backend: 'dom0', reason: 'test' });
  const qmpTimeout = () => Errors.qmpTimeout({ socket: '/run/work.qmp', waitingFor: 'device_add', timeoutMs: 5000 });

  it('is tried and audited once, until the device is plugged again, the frontend starts or the assignment changes', async () => {
    const { devices, backend, service, connector, autoAttach, clock, assign, tried, pass } = setup([stick('A')]);
    backend.refuse = notAttachable;
    assign('work', stick('A'));
    autoAttach.start();
    await autoAttach.settled();
    for (let i = 0; i < 5; i++) {
      clock.now += 3_600_000;
      await pass();
    }
    expect(tried()).toEqual(['work DG_NOT_ATTACHABLE']);

    devices.next([]);
    devices.next([stick('A')]);
    await autoAttach.settled();
    await pass();
    expect(tried()).toHaveLength(2);

    connector.lifecycle$.next({ type: 'started', domain: 'work' });
    await autoAttach.settled();
    await pass();
    expect(tried()).toHaveLength(3);

    service.unassign({ devclass: 'block', frontend: 'work' }, 'alice');
    assign('work', stick('A'), 'auto-attach');
    backend.refuse = undefined;
    await pass();
    expect(tried()).toEqual([...Array(3).fill('work DG_NOT_ATTACHABLE'), 'work ok']);
  });

  it('that may end by itself is tried again after 2 s, then twice as late each time, up to 5 min', async () => {
    const { connector, autoAttach, clock, assign, tried, pass } = setup([stick('A')]);
    connector.refuse = qmpTimeout;
    assign('work', stick('A'));
    autoAttach.start();
    await autoAttach.settled();
    const waits: number[] = [];
    for (let wait = RETRY_FIRST_MS; waits.length < 10; wait = Math.min(wait * 2, RETRY_MAX_MS)) {
      const before = connector.attempts;
      clock.now += wait - 1;
      await pass();
      expect(connector.attempts).toBe(before);
      clock.now += 1;
      await pass();
      expect(connector.attempts).toBe(before + 1);
      waits.push(wait);
    }
    expect(waits.slice(-3)).toEqual([256_000, RETRY_MAX_MS, RETRY_MAX_MS]);
    expect(tried()).toHaveLength(11);

    connector.refuse = undefined;
    clock.now += RETRY_MAX_MS;
    await pass();
    expect(connector.holder(stick('A'))).toBe('work');
  });

  it('because a part of the device is in use is tried again as soon as that part is released', async () => {
    const disk = stick('A');
    const partition: DeviceInfo = {
      ...stick('A', 'sdb1'),
      deviceId: 'part-1',
      parent: disk.port,
      inUse: true,
      hiddenReason: 'mounted on /mnt',
    };
    const { devices, connector, autoAttach, assign, tried, pass } = setup([disk, partition]);
    assign('work', disk);
    autoAttach.start();
    await autoAttach.settled();
    await pass();
    expect(tried()).toEqual(['work DG_DEVICE_IN_USE']);

    devices.next([disk, { ...partition, inUse: undefined, hiddenReason: undefined }]);
    await autoAttach.settled();
    expect(connector.holder(disk)).toBe('work');
  });

  it('after a person allowed it is not asked again, and is tried again without asking', async () => {
    const { connector, events, asks, autoAttach, clock, assign, tried, pass } = setup([stick('A')]);
    let asked = 0;
    const answering = events.events$.subscribe((e) => {
      if (e.type !== 'ask') return;
      asked++;
      asks.answer(e.ask.id, { verdict: 'allow', by: 'alice' });
    });
    try {
      connector.refuse = qmpTimeout;
      assign('work', stick('A'), 'ask-to-attach');
      autoAttach.start();
      await autoAttach.settled();
      await pass();
      expect([asked, tried().length]).toEqual([1, 1]);

      connector.refuse = undefined;
      clock.now += RETRY_FIRST_MS;
      await pass();
      expect([asked, tried()]).toEqual([1, ['work DG_QMP_TIMEOUT', 'work ok']]);
      expect(connector.holder(stick('A'))).toBe('work');
    } finally {
      answering.unsubscribe();
    }
  });
});
