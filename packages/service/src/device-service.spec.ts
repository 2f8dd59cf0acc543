import { BehaviorSubject } from 'rxjs';
import {
  type AttachSpec,
  DevgateError,
  type Connector,
  type DeviceInfo,
  type DeviceSource,
  type HypervisorAttachment,
  HostTree,
  Kernel,
  PLUGIN_API_VERSION,
  type Port,
  portKey,
} from '@devgate/core';
import { DaemonEvents } from './daemon-events';
import { DeviceService } from './device-service';
import { SqliteStateStore } from './store/state-store';
import { TempDir } from './store/testing/temp-store';

// The detach verbs as Qubes' qvm-device reads their argument (reference 1.3): two backends with PCI
// devices in the same ports, an in-memory hypervisor, and devgated's real state store.

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
  /** Ports whose detach the hypervisor refuses (a device it was given by someone else). */
  readonly refused = new Set<string>();
  async detach(_frontend: string, port: Port) {
    if (this.refused.has(portKey(port))) throw new DevgateError('DG_LIBVIRT_NOT_DEVGATES', "not devgate's");
    this.attached.delete(portKey(port));
  }
  attachments = async () => [...this.attached.values()];
  dispose() {}
}

const NIC = '0x8086:0x1502::p020000';
const XHCI = '0x8086:0x1e31::p0c0330';
const pci = (backend: string, portId: string, deviceId: string): DeviceInfo => ({
  port: { devclass: 'pci', backend, portId },
  deviceId,
  interfaces: [deviceId.slice(-7) as DeviceInfo['interfaces'][number]],
  data: {},
});
const DEVICES: Record<string, DeviceInfo[]> = {
  dom0: [pci('dom0', '00_19.0', NIC), pci('dom0', '00_14.0', XHCI)],
  lenovo: [pci('lenovo', '00_19.0', NIC), pci('lenovo', '00_14.0', XHCI)],
};

let tmp: TempDir;
let kernel: Kernel;
let store: SqliteStateStore;
let connector: MemoryConnector;
let service: DeviceService;

beforeEach(() => {
  tmp = new TempDir();
  kernel = new Kernel();
  kernel.registerDriver({
    id: 'pci',
    manifest: { apiVersion: PLUGIN_API_VERSION, description: 'test' },
    discover: (source) => new BehaviorSubject(DEVICES[source.backend]),
    attachSpec: () => ({ kind: 'pci', params: {}, options: {} }),
  });
  for (const backend of Object.keys(DEVICES)) {
    const source: DeviceSource = {
      id: `test:${backend}`,
      backend,
      hotplug: 'static',
      trees$: new BehaviorSubject(new HostTree([])),
      dataPath: async (_device, spec) => spec,
      dispose: () => undefined,
    };
    kernel.registerSource(source);
  }
  connector = new MemoryConnector();
  kernel.registerConnector(connector);
  store = new SqliteStateStore(tmp.file());
  service = new DeviceService(kernel.start(), store, new DaemonEvents());
});

afterEach(() => {
  kernel.dispose();
  store.dispose();
  tmp.remove();
});

async function attachAll(...devices: string[]): Promise<void> {
  for (const device of devices) await service.attach({ devclass: 'pci', frontend: 'work', device }, 'test');
}

const attachedPorts = () => [...connector.attached.values()].map((a) => `${a.port.backend}:${a.port.portId}`).sort();
const detach = (device: string) => service.detach({ devclass: 'pci', frontend: 'work', device }, 'test');

describe('DeviceService: the VM is checked first', () => {
  it('refuses an unknown VM before the device, for attach, detach and assign, and audits it', async () => {
    for (const attempt of [
      service.attach({ devclass: 'pci', frontend: 'nosuchvm', device: 'dom0:no_such' }, 'test'),
      service.detach({ devclass: 'pci', frontend: 'nosuchvm' }, 'test'),
      service.detach({ devclass: 'pci', frontend: 'nosuchvm', device: 'dom0:00_19.0' }, 'test'),
    ]) {
      await expect(attempt).rejects.toMatchObject({ code: 'DG_NO_CONNECTOR', message: "no such domain: 'nosuchvm'" });
    }
    // Qubes' qvm-device assign refuses one too: nothing is stored for a VM that does not exist.
    expect(() =>
      service.assign({ devclass: 'pci', frontend: 'nosuchvm', device: 'dom0:no_such', mode: 'required' }, 'test'),
    ).toThrow(expect.objectContaining({ code: 'DG_NO_CONNECTOR', message: "no such domain: 'nosuchvm'" }));
    expect(store.assignments.list()).toEqual([]);
    expect(store.audit.query({}).map((e) => `${e.action} ${e.outcome} ${e.code}`)).toEqual([
      'attach denied DG_NO_CONNECTOR',
      'detach denied DG_NO_CONNECTOR',
      'detach denied DG_NO_CONNECTOR',
      'assign denied DG_NO_CONNECTOR',
    ]);
  });
});

describe('DeviceService.detach', () => {
  it('detaching every device goes on past one the hypervisor refuses, and records each as it went', async () => {
    await attachAll('dom0:00_19.0', 'dom0:00_14.0', 'lenovo:00_19.0');
    connector.refused.add('pci:dom0:00_19.0');

    await expect(service.detach({ devclass: 'pci', frontend: 'work' }, 'test')).rejects.toMatchObject({
      code: 'DG_LIBVIRT_NOT_DEVGATES',
    });
    expect(attachedPorts()).toEqual(['dom0:00_19.0']);
    const detached = store.audit.query({ action: 'detach' }).filter((e) => e.outcome === 'ok');
    expect(detached.map((e) => `${e.backend}:${e.portId}`).sort()).toEqual(['dom0:00_14.0', 'lenovo:00_19.0']);
    expect(store.journal.pending()).toEqual([]);
  });

  it('BACKEND:* detaches what of that backend is attached, and nothing of another backend', async () => {
    await attachAll('dom0:00_19.0', 'lenovo:00_19.0', 'lenovo:00_14.0');

    expect((await detach('lenovo:*')).sort()).toEqual(['lenovo:00_14.0', 'lenovo:00_19.0']);
    expect(attachedPorts()).toEqual(['dom0:00_19.0']);
    expect(store.audit.query({ action: 'detach' })).toEqual([
      expect.objectContaining({ backend: 'lenovo', outcome: 'ok' }),
      expect.objectContaining({ backend: 'lenovo', outcome: 'ok' }),
    ]);
    expect(store.journal.pending()).toEqual([]);
  });

  it('BACKEND:*:DEVICE_ID detaches only the devices of that backend with that ID', async () => {
    await attachAll('dom0:00_19.0', 'lenovo:00_19.0', 'lenovo:00_14.0');

    expect(await detach(`lenovo:*:${XHCI}`)).toEqual(['lenovo:00_14.0']);
    expect(attachedPorts()).toEqual(['dom0:00_19.0', 'lenovo:00_19.0']);
  });

  it("a backend wildcard that matches nothing is Qubes' `<dev> is not attached.`, and detaches nothing", async () => {
    await attachAll('dom0:00_19.0');

    for (const device of ['nosuch:*', 'lenovo:*', `dom0:*:${XHCI}`]) {
      await expect(detach(device)).rejects.toMatchObject({
        code: 'DG_NOT_ATTACHED',
        message: `${device} is not attached.`,
      });
    }
    expect(attachedPorts()).toEqual(['dom0:00_19.0']);
    expect(store.audit.query({ action: 'detach' })).toEqual(
      Array(3).fill(expect.objectContaining({ outcome: 'denied', code: 'DG_NOT_ATTACHED' })),
    );
  });

  it('refuses a device ID that is not the device in the port, and detaches with the right one', async () => {
    await attachAll('dom0:00_19.0');

    const wrong = 'dom0:00_19.0:dead:beef::p000000';
    await expect(detach(wrong)).rejects.toMatchObject({
      code: 'DG_NOT_ATTACHED',
      message: `${wrong} is not attached.`,
      hint: `the device in dom0:00_19.0 is ${NIC}`,
    });
    expect(attachedPorts()).toEqual(['dom0:00_19.0']);
    expect(store.audit.query({ action: 'detach' })).toEqual([
      expect.objectContaining({ portId: '00_19.0', outcome: 'denied', code: 'DG_NOT_ATTACHED' }),
    ]);

    expect(await detach(`dom0:00_19.0:${NIC}`)).toEqual(['dom0:00_19.0']);
    expect(attachedPorts()).toEqual([]);
  });

  it('without a device detaches every device of the class attached to the frontend, of every backend', async () => {
    await attachAll('dom0:00_19.0', 'lenovo:00_14.0');

    expect((await service.detach({ devclass: 'pci', frontend: 'work' }, 'test')).sort()).toEqual([
      'dom0:00_19.0',
      'lenovo:00_14.0',
    ]);
    expect(attachedPorts()).toEqual([]);
  });
});

describe('DeviceService: a refusal is audited whatever the request held', () => {
  // An error's message echoes the request; a control character in it (or a name the store refuses)
  // once failed the audit record, so the user got DG_INVALID_STATE_VALUE and nothing was recorded.
  it('keeps the real error, and records the request printable, its refused names in details', async () => {
    await attachAll('dom0:00_19.0');
    const hostile = 'dom0:00_19.0:evil\n\u001b[2Kid';
    await expect(detach(hostile)).rejects.toMatchObject({ code: 'DG_NOT_ATTACHED' });
    await expect(
      service.attach({ devclass: 'pci', frontend: 'work', device: 'Bad Backend:00_19.0' }, 'test'),
    ).rejects.toMatchObject({ code: 'DG_INVALID_DOMAIN_NAME' });
    expect(() =>
      service.assign({ devclass: 'pci', frontend: 'work', device: 'dom0:00_19.0:a\nb', mode: 'required' }, 'test'),
    ).toThrow(expect.objectContaining({ code: 'DG_INVALID_STATE_VALUE' }));
    expect(() => service.unassign({ devclass: 'pci', frontend: 'work', device: 'dom0:00_19.0:a\nb' }, 'test')).toThrow(
      expect.objectContaining({ code: 'DG_NOT_ASSIGNED' }),
    );
    // A device argument that does not parse, or a port with nothing in it, is refused and audited too.
    expect(() =>
      service.assign({ devclass: 'pci', frontend: 'work', device: 'no-colon', mode: 'required' }, 'test'),
    ).toThrow(expect.objectContaining({ code: 'DG_BAD_DEVICE_ARGUMENT' }));
    expect(() =>
      service.assign({ devclass: 'pci', frontend: 'work', device: 'dom0:00_1f.7', mode: 'required' }, 'test'),
    ).toThrow(expect.objectContaining({ code: 'DG_UNKNOWN_DEVICE' }));

    const refused = store.audit.query({}).filter((e) => e.outcome !== 'ok');
    expect(refused.map((e) => [e.action, e.code, e.details])).toEqual([
      ['detach', 'DG_NOT_ATTACHED', undefined],
      ['attach', 'DG_INVALID_DOMAIN_NAME', { invalid: { backend: 'Bad Backend' } }],
      ['assign', 'DG_INVALID_STATE_VALUE', { invalid: { deviceId: 'a b' } }],
      ['unassign', 'DG_NOT_ASSIGNED', { invalid: { deviceId: 'a b' } }],
      ['assign', 'DG_BAD_DEVICE_ARGUMENT', undefined],
      ['assign', 'DG_UNKNOWN_DEVICE', undefined],
    ]);
    expect(refused[0].reason).toBe('dom0:00_19.0:evil id is not attached.');
    expect(store.journal.pending()).toEqual([]);
  });
});
