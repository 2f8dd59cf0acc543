import { BehaviorSubject } from 'rxjs';
import {
  type AttachSpec,
  type Connector,
  type DeviceSource,
  HostTree,
  type HypervisorAttachment,
  Kernel,
  type RawDeviceRecord,
  portKey,
  recordOf,
} from '@devgate/core';
import { type Recording, isRecordedDevice, RecordedDevice, loadRecording } from '@devgate/host';
import { recordedFixture } from '@devgate/testkit';
import { inputModule } from './input-module';
import { InputReplug } from './input-replug';

let recording: Recording;
beforeAll(() => (recording = loadRecording(recordedFixture('usbkbd.umockdev'))));
afterAll(() => recording.dispose());

const KEYBOARD = { devclass: 'input', backend: 'dom0', portId: '1-1.5.4.2' };
const USB_DEVICE = '/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2';

/** The same keyboard plugged back so fast that nobody saw it gone: its event node is another one. */
function sameKeyboardNewNode(): HostTree {
  return new HostTree(
    recording.tree.devices().map((r): RawDeviceRecord => {
      if (!r.devpath.endsWith('/event5')) return r;
      const devpath = r.devpath.replace(/event5$/, 'event6');
      const properties = { ...r.properties, DEVNAME: '/dev/input/event6', MINOR: '70' };
      return isRecordedDevice(r)
        ? new RecordedDevice({ ...r, devpath, properties })
        : recordOf(devpath, r.subsystem, properties);
    }),
  );
}

/**
 * The same keyboard plugged back so fast that nobody saw it gone, and the kernel gave its event node
 * the same name and number again: only the input device's instance (input17 -> input99) differs.
 */
function sameKeyboardSameNodeNewInstance(): HostTree {
  const renamed = (devpath: string) =>
    devpath.replace(/\/input(\d+)(?=\/|$)/, (_m, n: string) => `/input${Number(n) + 82}`);
  return new HostTree(
    recording.tree.devices().map((r): RawDeviceRecord => {
      if (!/\/input\/input\d+/.test(r.devpath)) return r;
      const devpath = renamed(r.devpath);
      return isRecordedDevice(r) ? new RecordedDevice({ ...r, devpath }) : recordOf(devpath, r.subsystem, r.properties);
    }),
  );
}

/** The same keyboard with another serial: another identity in the same port. */
function anotherKeyboard(): HostTree {
  return new HostTree(
    recording.tree.devices().map((r): RawDeviceRecord => {
      if (r.devpath !== USB_DEVICE) return r;
      const properties = { ...r.properties, ID_SERIAL_SHORT: 'OTHER-1' };
      return isRecordedDevice(r)
        ? new RecordedDevice({ ...r, properties })
        : recordOf(r.devpath, r.subsystem, properties);
    }),
  );
}

function harness(detachGate?: Promise<void>) {
  const trees = new BehaviorSubject<HostTree>(recording.tree);
  const source: DeviceSource = {
    id: 'replay',
    backend: 'dom0',
    hotplug: 'static',
    trees$: trees,
    dataPath: async (_device, spec) => ({ ...spec, params: { ...spec.params, evdev: '/dev/input/event5' } }),
    dispose: () => undefined,
  };
  const live = new Map<string, HypervisorAttachment>();
  const calls: string[] = [];
  const connector: Connector = {
    id: 'fake',
    manages: (d) => d === 'work',
    domains: () => ['work'],
    isRunning: async () => true,
    attach: async (frontend, port, spec: AttachSpec, deviceId) => {
      calls.push(`attach ${frontend} ${port.portId} ${JSON.stringify(spec.options)}`);
      const a = { port, frontend, deviceId, options: spec.options };
      live.set(portKey(port), a);
      return a;
    },
    detach: async (frontend, port) => {
      calls.push(`detach ${frontend} ${port.portId}`);
      await detachGate;
      if (detachGate) calls.push(`detached ${frontend} ${port.portId}`);
      live.delete(portKey(port));
    },
    attachments: async () => [...live.values()],
    dispose: () => undefined,
  };
  const kernel = new Kernel().load(inputModule);
  kernel.registerSource(source);
  kernel.registerConnector(connector);
  const manager = kernel.start();
  const replug = new InputReplug(manager, {
    attach: (device, frontend, options) =>
      manager.attach({ frontend, port: device.port, deviceId: device.deviceId, options, requestedBy: 'replug' }),
    detach: (device, frontend) => manager.detach(frontend, device.port),
  });
  replug.start();
  const withoutKeyboard = new HostTree(recording.tree.devices().filter((r) => !r.devpath.startsWith(USB_DEVICE)));
  return {
    manager,
    replug,
    calls,
    pull: () => trees.next(withoutKeyboard),
    plug: (tree = recording.tree) => trees.next(tree),
    dispose: () => {
      replug.dispose();
      kernel.dispose();
    },
  };
}

const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
};

describe('InputReplug: passthrough that survives a replug', () => {
  it('attaches the same keyboard again, with the same options, when it comes back; not another one', async () => {
    const h = harness();
    try {
      await h.manager.attach({
        frontend: 'work',
        port: KEYBOARD,
        options: { 'grab-toggle': 'alt-alt', repeat: 'yes' },
      });
      h.pull();
      await settle();
      expect(h.calls).toEqual([
        'attach work 1-1.5.4.2 {"grab-toggle":"alt-alt","grab-all":"no","repeat":"yes"}',
        'detach work 1-1.5.4.2',
      ]);
      expect(h.replug.pending()).toEqual([expect.objectContaining({ frontend: 'work', backend: 'dom0' })]);

      h.plug(anotherKeyboard()); // same port, another identity: nothing
      await settle();
      expect(h.calls).toHaveLength(2);
      h.pull();
      await settle();
      h.plug();
      await settle();
      expect(h.calls.at(-1)).toBe('attach work 1-1.5.4.2 {"grab-toggle":"alt-alt","grab-all":"no","repeat":"yes"}');
      expect(h.manager.get(KEYBOARD)?.attachment?.frontend).toBe('work');
      expect(h.replug.pending()).toEqual([]);
    } finally {
      h.dispose();
    }
  });

  it('a detached device is not attached again when it is replugged', async () => {
    const h = harness();
    try {
      await h.manager.attach({ frontend: 'work', port: KEYBOARD });
      await h.manager.detach('work', KEYBOARD);
      h.pull();
      await settle();
      h.plug();
      await settle();
      expect(h.calls).toEqual([
        'attach work 1-1.5.4.2 {"grab-toggle":"ctrl-ctrl","grab-all":"no","repeat":"no"}',
        'detach work 1-1.5.4.2',
      ]);
      expect(h.manager.get(KEYBOARD)?.attachment).toBeUndefined();
    } finally {
      h.dispose();
    }
  });

  it('renews a passthrough whose event node changed under it (a replug nobody saw), with the same options', async () => {
    const h = harness();
    try {
      await h.manager.attach({ frontend: 'work', port: KEYBOARD, options: { 'grab-toggle': 'alt-alt' } });
      h.plug(sameKeyboardNewNode());
      await settle();
      expect(h.calls).toEqual([
        'attach work 1-1.5.4.2 {"grab-toggle":"alt-alt","grab-all":"no","repeat":"no"}',
        'detach work 1-1.5.4.2',
        'attach work 1-1.5.4.2 {"grab-toggle":"alt-alt","grab-all":"no","repeat":"no"}',
      ]);
      expect(h.manager.get(KEYBOARD)?.data['event-devices']).toBe('13:70');
      expect(h.manager.get(KEYBOARD)?.attachment?.frontend).toBe('work');
    } finally {
      h.dispose();
    }
  });

  it('renews a passthrough when the kernel reused the event node’s number for the replugged device', async () => {
    const h = harness();
    try {
      await h.manager.attach({ frontend: 'work', port: KEYBOARD });
      const before = h.manager.get(KEYBOARD)!.data;
      h.plug(sameKeyboardSameNodeNewInstance());
      await settle();
      const after = h.manager.get(KEYBOARD)!.data;
      expect(after['event-devices']).toBe(before['event-devices']);
      expect(after['input-instances']).not.toBe(before['input-instances']);
      expect(h.calls).toEqual([
        'attach work 1-1.5.4.2 {"grab-toggle":"ctrl-ctrl","grab-all":"no","repeat":"no"}',
        'detach work 1-1.5.4.2',
        'attach work 1-1.5.4.2 {"grab-toggle":"ctrl-ctrl","grab-all":"no","repeat":"no"}',
      ]);
    } finally {
      h.dispose();
    }
  });

  it('waits for the old passthrough to be taken down before it attaches the device again', async () => {
    let release = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    const h = harness(gate);
    try {
      await h.manager.attach({ frontend: 'work', port: KEYBOARD });
      h.pull(); // the kernel starts detaching it from the VM; the VM is slow to let go
      await settle();
      h.plug(); // back already
      await settle();
      expect(h.calls).toEqual([
        'attach work 1-1.5.4.2 {"grab-toggle":"ctrl-ctrl","grab-all":"no","repeat":"no"}',
        'detach work 1-1.5.4.2',
      ]);
      release();
      await settle();
      expect(h.calls.slice(2)).toEqual([
        'detached work 1-1.5.4.2',
        'attach work 1-1.5.4.2 {"grab-toggle":"ctrl-ctrl","grab-all":"no","repeat":"no"}',
      ]);
    } finally {
      h.dispose();
    }
  });
});
