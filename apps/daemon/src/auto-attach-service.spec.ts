import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BehaviorSubject, firstValueFrom, filter } from 'rxjs';
import {
  type AttachSpec,
  type Connector,
  type DeviceInfo,
  type HypervisorAttachment,
  HostTree,
  Kernel,
  PLUGIN_API_VERSION,
  type Port,
  portKey,
} from '@devgate/core';
import { DaemonEvents, DeviceService, SqliteStateStore } from '@devgate/service';
import { AskService } from './services/asks';
import { AutoAttach } from './services/auto-attach';

// AutoAttach on real SQLite, with the devices and the hypervisor in memory, so that a device can be
// swapped exactly between an ask and its answer. The ask race: a question is about one device, and
// its answer may come a minute later; if another device sits in the port by then, nothing is attached.

const usbStick = (serial: string, portId = '2-1'): DeviceInfo => ({
  port: { devclass: 'usb', backend: 'dom0', portId },
  deviceId: `0781:5567:${serial}:u080650`,
  interfaces: ['u080650'],
  data: {},
});

class MemoryConnector implements Connector {
  readonly id = 'memory';
  readonly attached = new Map<string, HypervisorAttachment>();
  manages = (domain: string) => domain === 'work';
  domains = () => ['work'];
  isRunning = async () => true;
  async attach(frontend: string, port: Port, spec: AttachSpec, deviceId: string) {
    const attachment = { port, frontend, deviceId, options: spec.options };
    this.attached.set(portKey(port), attachment);
    return attachment;
  }
  async detach(_frontend: string, port: Port) {
    this.attached.delete(portKey(port));
  }
  attachments = async () => [...this.attached.values()];
  dispose() {}
}

let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-ask-race-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function setup(initial: DeviceInfo[]) {
  const devices = new BehaviorSubject<DeviceInfo[]>(initial);
  const kernel = new Kernel();
  kernel.registerDriver({
    id: 'usb',
    manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
    discover: () => devices,
    attachSpec: () => ({ kind: 'usb-host', params: {}, options: {} }),
  });
  kernel.registerSource({
    id: 'test',
    backend: 'dom0',
    hotplug: 'static',
    trees$: new BehaviorSubject(new HostTree([])),
    dataPath: async (_device, spec) => spec,
    dispose: () => undefined,
  });
  const connector = new MemoryConnector();
  kernel.registerConnector(connector);
  const manager = kernel.start();
  const store = new SqliteStateStore(path.join(dir, 'state.db'));
  const events = new DaemonEvents();
  const asks = new AskService(store, events, 60_000);
  const service = new DeviceService(manager, store, events);
  const autoAttach = new AutoAttach(manager, store, asks, service, 60_000);
  const dispose = () => {
    autoAttach.dispose();
    asks.dispose();
    kernel.dispose();
    store.dispose();
  };
  return { devices, connector, manager, store, events, asks, autoAttach, dispose };
}

const firstAsk = (events: DaemonEvents) =>
  firstValueFrom(events.events$.pipe(filter((e) => e.type === 'ask'))).then((e) =>
    e.type === 'ask' ? e.ask : never(),
  );

/** Whatever device sits in this port goes to `work`. */
function assignPort(store: SqliteStateStore, port: Port, mode: 'auto-attach' | 'ask-to-attach'): void {
  store.assignments.add({ ...port, deviceId: '*', frontend: 'work', mode, options: {} });
}

function never(): never {
  throw new Error('unreachable');
}

it('attaches nothing when the device in the port changed between the ask and the answer', async () => {
  const { devices, connector, store, events, asks, autoAttach, manager, dispose } = setup([]);
  try {
    assignPort(store, usbStick('A').port, 'ask-to-attach');
    devices.next([usbStick('A')]);
    const asked = firstAsk(events);
    const considered = autoAttach.consider(usbStick('A'));
    const ask = await asked;
    expect(ask.deviceId).toBe(usbStick('A').deviceId);

    devices.next([]); // stick A pulled ...
    devices.next([usbStick('B')]); // ... and stick B pushed into the same port
    asks.answer(ask.id, { verdict: 'allow', by: 'test' });
    await considered;

    expect(connector.attached.size).toBe(0);
    expect(manager.get(usbStick('B').port)?.attachment).toBeUndefined();
    // The answer is audited for the device it was about.
    expect(store.audit.query({ action: 'answer' })).toEqual([
      expect.objectContaining({ deviceId: usbStick('A').deviceId, outcome: 'ok' }),
    ]);
  } finally {
    dispose();
  }
});

it('attaches the device asked about when it is still the one in the port', async () => {
  const { devices, connector, events, asks, autoAttach, store, dispose } = setup([]);
  try {
    assignPort(store, usbStick('A').port, 'ask-to-attach');
    autoAttach.start();
    const asked = firstAsk(events);
    devices.next([usbStick('A')]);
    const attached = firstValueFrom(
      events.events$.pipe(filter((e) => e.type === 'audit' && e.entry.action === 'auto-attach')),
    );
    asks.answer((await asked).id, { verdict: 'allow', by: 'test' });
    await attached;
    expect([...connector.attached.values()]).toEqual([
      expect.objectContaining({ frontend: 'work', deviceId: usbStick('A').deviceId }),
    ]);
  } finally {
    dispose();
  }
});

it('matches a burst of new devices against one read of the assignments', async () => {
  const { devices, connector, events, autoAttach, store, dispose } = setup([]);
  try {
    assignPort(store, usbStick('K', '2-42').port, 'auto-attach');
    autoAttach.start();
    const list = jest.spyOn(store.assignments, 'list');
    const matching = jest.spyOn(store.assignments, 'matching');
    const attached = firstValueFrom(
      events.events$.pipe(filter((e) => e.type === 'audit' && e.entry.action === 'auto-attach')),
    );
    // One hotplug pass: a hub's worth of devices at once, one of them in the assigned port.
    devices.next(Array.from({ length: 100 }, (_, i) => usbStick(`S${i}`, `2-${i}`)));
    await attached;
    expect([...connector.attached.values()]).toEqual([expect.objectContaining({ deviceId: usbStick('S42').deviceId })]);
    expect(list).toHaveBeenCalledTimes(1);
    expect(matching).not.toHaveBeenCalled();
  } finally {
    dispose();
  }
});
