import { join } from 'node:path';
import { type AttachSpec, type Port, qemuDeviceSpec } from '@devgate/core';
import { Observable } from 'rxjs';
import { writeRegistry } from './domain-registry.js';
import { encodeQdevId } from './qemu-attach.js';
import { genericNodeName } from './qemu-generic.js';
import { QemuConnector } from './qemu-connector.js';
import { QmpClient, type QmpEvent } from './qmp-client.js';
import { Cleanup, type FakePeer, fakeQmpServer, waitUntil } from './testing/fixtures.js';

// The connector against a fake QEMU, for what a real one cannot be made to do on cue: answer
// device_add after devgate stopped waiting, or die while a guest lets go of a device. No QEMU.
jest.setTimeout(20_000);

/**
 * One domain's QEMU, as far as the connector sees it: its devices, block nodes, chardevs and objects,
 * answered in order (one command at a time, as QEMU without oob runs them).
 */
class FakeQemu {
  readonly devices = new Map<string, { driver: string; drive?: string; chardev?: string }>();
  readonly nodes = new Set<string>();
  readonly chardevs = new Set<string>();
  readonly objects = new Set<string>();
  /** How long chardev-add takes (QEMU busy): past the connector's command bound, its answer is late. */
  chardevAddMs = 0;
  /** How many device_add QEMU refused. */
  refused = 0;
  /** How long device_add takes (QEMU busy): past the connector's command bound, its answer is late. */
  deviceAddMs = 0;
  /** What QEMU says to device_add, after `deviceAddMs`, instead of adding the device. */
  deviceAddRefusal?: string;
  /** Whether the guest lets go on device_del (DEVICE_DELETED); PCI without a guest OS never does. */
  guestLetsGo = true;
  /** Whether QEMU dies (its socket closes) after answering device_del, before the guest let go. */
  diesOnDeviceDel = false;
  /** Runs as a command comes in, before QEMU carries it out (a test acts at that point). */
  onCommand?: (execute: string, args: Record<string, unknown>) => Promise<void> | void;

  async serve(peer: FakePeer): Promise<void> {
    await peer.handshake();
    for (;;) {
      const request = await peer.next();
      const args = (request['arguments'] ?? {}) as Record<string, unknown>;
      const answer = (reply: Record<string, unknown>) => peer.send({ ...reply, id: request['id'] });
      const fail = (errorClass: string, desc: string) => answer({ error: { class: errorClass, desc } });
      await this.onCommand?.(String(request['execute']), args);
      switch (request['execute']) {
        case 'query-status':
          answer({ return: { status: 'running', running: true } });
          break;
        case 'qom-list':
          answer({
            return:
              args['path'] === '/machine/peripheral'
                ? [...this.devices].map(([name, d]) => ({ name, type: `child<${d.driver}>` }))
                : args['path'] === '/objects'
                  ? [...this.objects].map((name) => ({ name, type: 'child<rng-builtin>' }))
                  : [],
          });
          break;
        case 'query-named-block-nodes':
          answer({ return: [...this.nodes].map((name) => ({ 'node-name': name })) });
          break;
        case 'blockdev-add': {
          const name = String(args['node-name']);
          if (this.nodes.has(name)) fail('GenericError', `Duplicate nodes with node-name='${name}'`);
          else {
            this.nodes.add(name);
            answer({ return: {} });
          }
          break;
        }
        case 'blockdev-del': {
          const name = String(args['node-name']);
          if ([...this.devices.values()].some((d) => d.drive === name)) {
            fail('GenericError', `Node '${name}' is busy: block device is in use by device`);
          } else {
            this.nodes.delete(name);
            answer({ return: {} });
          }
          break;
        }
        case 'chardev-add': {
          await new Promise((resolve) => setTimeout(resolve, this.chardevAddMs));
          const id = String(args['id']);
          if (this.chardevs.has(id)) {
            fail('GenericError', `attempt to add duplicate property '${id}' to object (type 'container')`);
          } else {
            this.chardevs.add(id);
            answer({ return: {} });
          }
          break;
        }
        case 'query-chardev':
          answer({ return: [...this.chardevs].map((label) => ({ label, filename: 'null', 'frontend-open': false })) });
          break;
        case 'object-add': {
          const id = String(args['id']);
          if (this.objects.has(id)) {
            fail('GenericError', `attempt to add duplicate property '${id}' to object (type 'container')`);
          } else {
            this.objects.add(id);
            answer({ return: {} });
          }
          break;
        }
        case 'object-del': {
          const id = String(args['id']);
          if (this.objects.delete(id)) answer({ return: {} });
          else fail('GenericError', `object '${id}' not found`);
          break;
        }
        case 'chardev-remove': {
          const id = String(args['id']);
          if ([...this.devices.values()].some((d) => d.chardev === id)) fail('GenericError', `Chardev '${id}' is busy`);
          else if (!this.chardevs.delete(id)) fail('GenericError', `Chardev '${id}' not found`);
          else answer({ return: {} });
          break;
        }
        case 'device_add':
          await new Promise((resolve) => setTimeout(resolve, this.deviceAddMs));
          if (this.deviceAddRefusal) {
            this.refused++;
            fail('GenericError', this.deviceAddRefusal);
            break;
          }
          // As QEMU does, a device is not added without its block node or chardev.
          if (args['drive'] !== undefined && !this.nodes.has(String(args['drive']))) {
            fail(
              'GenericError',
              `Property '${String(args['driver'])}.drive' can't find value '${String(args['drive'])}'`,
            );
            break;
          }
          if (args['chardev'] !== undefined && !this.chardevs.has(String(args['chardev']))) {
            fail(
              'GenericError',
              `Property '${String(args['driver'])}.chardev' can't find value '${String(args['chardev'])}'`,
            );
            break;
          }
          this.devices.set(String(args['id']), {
            driver: String(args['driver']),
            ...(args['drive'] === undefined ? {} : { drive: String(args['drive']) }),
            ...(args['chardev'] === undefined ? {} : { chardev: String(args['chardev']) }),
          });
          answer({ return: {} });
          break;
        case 'device_del': {
          const id = String(args['id']);
          if (!this.devices.has(id)) {
            fail('DeviceNotFound', `Device '${id}' not found`);
            break;
          }
          answer({ return: {} });
          if (this.diesOnDeviceDel) peer.connection.destroy();
          else if (this.guestLetsGo) {
            this.devices.delete(id);
            peer.send({ event: 'DEVICE_DELETED', data: { device: id, path: `/machine/peripheral/${id}` } });
          }
          break;
        }
        default:
          fail('CommandNotFound', `The command ${String(request['execute'])} has not been found`);
      }
    }
  }
}

const cleanup = new Cleanup();
let qemu: FakeQemu;
let connector: QemuConnector;

const stick: Port = { devclass: 'block', backend: 'dom0', portId: 'sdb' };
const stickSpec: AttachSpec = {
  kind: 'block',
  params: { readOnly: false, devtype: 'disk', path: '/dev/sdb' },
  options: { 'read-only': 'no' },
};

/** A connector whose commands wait `commandTimeoutMs`, on one fake domain `work`. */
async function start(commandTimeoutMs = 10_000): Promise<void> {
  const dir = await cleanup.tempDir();
  const socket = join(dir, 'work.qmp');
  const registryFile = join(dir, 'domains.json');
  await writeRegistry(registryFile, { dom0: 'dom0', domains: { work: { qmp: socket } } });
  qemu = new FakeQemu();
  await fakeQmpServer(cleanup, socket, (peer) => void qemu.serve(peer));
  connector = new QemuConnector({ registryFile, commandTimeoutMs, unplugTimeoutMs: 500, lifecyclePollMs: 60_000 });
  cleanup.defer(() => connector.dispose());
}
afterEach(() => cleanup.run());

describe('a device_add that QEMU answers after devgate stopped waiting', () => {
  it('is an attachment: the VM holds the device, so it is attached and listed, never free', async () => {
    await start(400);
    qemu.deviceAddMs = 600;
    const result = await connector.attach('work', stick, stickSpec, 'ID-SDB');
    expect(result).toEqual({
      port: stick,
      frontend: 'work',
      deviceId: 'ID-SDB',
      options: { 'read-only': 'no', 'frontend-dev': 'xvdi' },
    });
    expect([...qemu.devices.keys()]).toHaveLength(1);
    expect(await connector.attachments()).toEqual([result]);
  });

  it('is read back from QEMU once it answers, when it did not answer in time to ask it', async () => {
    await start(400);
    // Longer than device_add's wait and the read-back's after it: the attach cannot tell.
    qemu.deviceAddMs = 1_500;
    await expect(connector.attach('work', stick, stickSpec, 'ID-SDB')).rejects.toMatchObject({
      code: 'DG_QMP_TIMEOUT',
    });
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect([...qemu.devices.keys()]).toHaveLength(1);
    expect(await connector.attachments()).toEqual([
      { port: stick, frontend: 'work', deviceId: 'ID-SDB', options: { 'read-only': 'no', 'frontend-dev': 'xvdi' } },
    ]);
  });

  it('that QEMU refused leaves the VM as it was: no device, no block node', async () => {
    await start(400);
    qemu.deviceAddMs = 600;
    qemu.deviceAddRefusal = "Bus 'xhci.0' does not support hotplugging";
    await expect(connector.attach('work', stick, stickSpec, 'ID-SDB')).rejects.toMatchObject({
      code: 'DG_QMP_TIMEOUT',
    });
    expect(qemu.devices.size).toBe(0);
    expect(qemu.nodes.size).toBe(0);
    expect(await connector.attachments()).toEqual([]);
  });
});

/** Every attach kind that ends in a device_add, as the kernel hands it to the connector. */
const otherKinds: { kind: string; port: Port; spec: AttachSpec; deviceId: string }[] = [
  {
    kind: 'usb-host',
    port: { devclass: 'usb', backend: 'dom0', portId: '2-4' },
    spec: { kind: 'usb-host', params: { hostbus: 2, hostport: '4' }, options: {} },
    deviceId: '0781:5567:4C530001',
  },
  {
    kind: 'vfio-pci',
    port: { devclass: 'pci', backend: 'dom0', portId: '00_14.0' },
    spec: { kind: 'vfio-pci', params: { host: '0000:00:14.0' }, options: { 'no-strict-reset': 'True' } },
    deviceId: '0x8086:0xa12f::p0c0330',
  },
  {
    kind: 'usb-redir',
    port: { devclass: 'usb', backend: 'sys-usb', portId: '2-4' },
    spec: {
      kind: 'usb-redir',
      params: { socket: '/run/devgate/sys-usb-2-4.sock', vendorid: 0x0781, productid: 0x5567 },
      options: {},
    },
    deviceId: '0781:5567:4C530001',
  },
  {
    kind: 'qemu-device',
    port: { devclass: 'serial', backend: 'dom0', portId: 'ttyUSB0' },
    spec: qemuDeviceSpec({ device: 'usb-serial', chardev: 'null' }, { model: 'usb-serial' }),
    deviceId: 'serial:0403:6001:A50285BI',
  },
];

describe.each(otherKinds)('a $kind device_add that QEMU answers after devgate stopped waiting', (kind) => {
  const attachment = { port: kind.port, frontend: 'work', deviceId: kind.deviceId, options: kind.spec.options };
  /** A connector whose commands wait 400 ms, on a VM with a free PCIe root port (for vfio-pci). */
  const startWithRootPort = async () => {
    await start(400);
    qemu.devices.set('rp1', { driver: 'pcie-root-port' });
  };
  const devgateDevices = () => [...qemu.devices.keys()].filter((id) => id.startsWith('dg-'));

  it('is an attachment: the VM holds the device, so it is attached and listed, never free', async () => {
    await startWithRootPort();
    qemu.deviceAddMs = 600;
    expect(await connector.attach('work', kind.port, kind.spec, kind.deviceId)).toEqual(attachment);
    expect(devgateDevices()).toHaveLength(1);
    expect(await connector.attachments()).toEqual([attachment]);
  });

  it('is read back from QEMU once it answers, when it did not answer in time to ask it', async () => {
    await startWithRootPort();
    qemu.deviceAddMs = 1_500;
    await expect(connector.attach('work', kind.port, kind.spec, kind.deviceId)).rejects.toMatchObject({
      code: 'DG_QMP_TIMEOUT',
    });
    // QEMU adds the device after all.
    await waitUntil(() => devgateDevices().length === 1, 3_000);
    expect(await connector.attachments()).toEqual([attachment]);
  });

  it('that QEMU refused leaves the VM as it was: no device, no chardev', async () => {
    await startWithRootPort();
    qemu.deviceAddMs = 600;
    qemu.deviceAddRefusal = "Bus 'xhci.0' does not support hotplugging";
    await expect(connector.attach('work', kind.port, kind.spec, kind.deviceId)).rejects.toMatchObject({
      code: 'DG_QMP_TIMEOUT',
    });
    expect(devgateDevices()).toEqual([]);
    expect(qemu.chardevs.size).toBe(0);
    expect(await connector.attachments()).toEqual([]);
  });
});

it('a guest letting go of a device in a VM that dies meanwhile: the VM is not running (and the device free)', async () => {
  await start();
  const qdevId = encodeQdevId({ c: 'block', b: 'dom0', p: 'sdb', d: 'ID-SDB', o: { 'frontend-dev': 'xvdi' } });
  qemu.devices.set(qdevId, { driver: 'usb-storage', drive: 'dg-xvdi' });
  qemu.nodes.add('dg-xvdi');
  qemu.diesOnDeviceDel = true;
  await expect(connector.detach('work', stick)).rejects.toMatchObject({
    code: 'DG_DOMAIN_NOT_RUNNING',
    message: 'domain work is not running',
  });
});

/** The kinds that add a chardev, block node or object before their device_add. */
const kindsWithBackends = [
  otherKinds.find((k) => k.kind === 'usb-redir')!,
  { ...otherKinds.find((k) => k.kind === 'qemu-device')!, kind: 'qemu-device with a chardev' },
  {
    kind: 'qemu-device with an object',
    port: { devclass: 'rng', backend: 'dom0', portId: 'hwrng' },
    spec: qemuDeviceSpec({ device: 'virtio-rng-pci', object: { type: 'rng-builtin', link: 'rng' } }, {}),
    deviceId: 'rng:hwrng',
  },
  {
    kind: 'qemu-device with a block node',
    port: { devclass: 'block', backend: 'dom0', portId: 'sdc' },
    spec: (() => {
      const spec = qemuDeviceSpec({ device: 'usb-storage', blockdev: { readOnly: true }, hostNode: 'block' }, {});
      return { ...spec, params: { ...spec.params, path: '/dev/sdc' } };
    })(),
    deviceId: 'ID-SDC',
  },
];

describe.each(kindsWithBackends)('a $kind device_add that failed unseen', (kind) => {
  const attachment = { port: kind.port, frontend: 'work', deviceId: kind.deviceId, options: kind.spec.options };

  it('after a device_add QEMU never carried out and never answered for, the same port attaches again', async () => {
    await start(400);
    qemu.deviceAddMs = 1_500;
    qemu.deviceAddRefusal = "Bus 'xhci.0' does not support hotplugging";
    await expect(connector.attach('work', kind.port, kind.spec, kind.deviceId)).rejects.toMatchObject({
      code: 'DG_QMP_TIMEOUT',
    });
    await waitUntil(() => qemu.refused === 1, 3_000);
    qemu.deviceAddMs = 0;
    qemu.deviceAddRefusal = undefined;
    expect(await connector.attach('work', kind.port, kind.spec, kind.deviceId)).toEqual(attachment);
    expect(await connector.attachments()).toEqual([attachment]);
  });
});

it('after a chardev-add QEMU answered too late for devgate, the same port attaches again', async () => {
  const { port, spec, deviceId } = otherKinds.find((k) => k.kind === 'usb-redir')!;
  await start(400);
  // QEMU answers the read-back after the chardev-add: undo did not know the chardev went in.
  qemu.chardevAddMs = 600;
  await expect(connector.attach('work', port, spec, deviceId)).rejects.toMatchObject({ code: 'DG_QMP_TIMEOUT' });
  expect(qemu.chardevs.size).toBe(1);
  qemu.chardevAddMs = 0;
  await connector.attach('work', port, spec, deviceId);
  expect(qemu.chardevs.size).toBe(1);
  expect(await connector.attachments()).toEqual([{ port, frontend: 'work', deviceId, options: {} }]);
});

it("a reading removes devgate's chardevs, objects and block nodes that no device uses, and nothing else", async () => {
  await start();
  const redir = encodeQdevId({ c: 'usb', b: 'sys-usb', p: '2-4', d: '0781:5567:4C530001', o: {} });
  const orphanRedir = encodeQdevId({ c: 'usb', b: 'sys-usb', p: '2-5', d: '0781:5567:4C530002', o: {} });
  const orphanRng = encodeQdevId({ c: 'rng', b: 'dom0', p: 'hwrng', d: 'rng:hwrng', k: 'qemu-device', o: {} });
  const orphanDisk = encodeQdevId({ c: 'block', b: 'dom0', p: 'sdc', d: 'ID-SDC', k: 'qemu-device', o: {} });
  const input = `dgi0n1-${encodeQdevId({ c: 'input', b: 'dom0', p: 'event3', o: {} }).slice(3)}`;
  qemu.devices.set(redir, { driver: 'usb-redir', chardev: redir });
  qemu.chardevs.add(redir);
  qemu.chardevs.add(orphanRedir);
  qemu.objects.add(orphanRng);
  qemu.nodes.add(genericNodeName(orphanDisk));
  // The VM's own, and an input attachment (objects without a device).
  for (const id of ['serial0', 'compat_monitor0', 'dg-serial']) qemu.chardevs.add(id);
  for (const id of ['rng0', input]) qemu.objects.add(id);
  for (const name of ['drive0', 'dgq-mine']) qemu.nodes.add(name);

  await connector.attachments();
  expect([...qemu.chardevs].sort()).toEqual(['compat_monitor0', 'dg-serial', redir, 'serial0'].sort());
  expect([...qemu.objects].sort()).toEqual([input, 'rng0'].sort());
  expect([...qemu.nodes].sort()).toEqual(['dgq-mine', 'drive0']);
});

it('a reading while devgate attaches leaves the object it added for a device it is adding', async () => {
  const host = otherKinds.find((k) => k.kind === 'usb-host')!;
  const rng = kindsWithBackends.find((k) => k.kind === 'qemu-device with an object')!;
  await start(400);
  // A usb-host device_add QEMU refuses late: the connector drops its list, so the next call reads QEMU.
  qemu.deviceAddMs = 600;
  qemu.deviceAddRefusal = "Bus 'xhci.0' does not support hotplugging";
  let armed = false;
  let rngAttach: Promise<unknown> | undefined;
  qemu.onCommand = async (execute) => {
    if (execute === 'qom-list' && armed && !rngAttach) {
      // The read-back after the timeout: the rng attach starts on the list still known.
      qemu.deviceAddMs = 0;
      qemu.deviceAddRefusal = undefined;
      rngAttach = connector.attach('work', rng.port, rng.spec, rng.deviceId);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    // Between the rng's object-add and its device_add, a reading asks QEMU.
    if (execute === 'object-add') await new Promise((resolve) => setTimeout(resolve, 100));
  };
  // The first reading, so that the usb-host attach's only qom-list is its read-back.
  await connector.attachments();
  armed = true;
  await expect(connector.attach('work', host.port, host.spec, host.deviceId)).rejects.toMatchObject({
    code: 'DG_QMP_TIMEOUT',
  });
  const reading = connector.attachments();
  await rngAttach;
  await reading;
  const attachment = { port: rng.port, frontend: 'work', deviceId: rng.deviceId, options: {} };
  expect(qemu.objects.size).toBe(1);
  expect(await connector.attachments()).toEqual([attachment]);
});

it('two block attaches to one VM, the first so unanswered that the known list is dropped meanwhile: the second keeps its block node', async () => {
  const sdc: Port = { devclass: 'block', backend: 'dom0', portId: 'sdc' };
  const sdcSpec: AttachSpec = { ...stickSpec, params: { ...stickSpec.params, path: '/dev/sdc', frontendDev: 'xvdj' } };
  // Commands bounded at 2 s. The first attach's device_add (t=0) takes 5 s: it times out (t=2 s), and
  // so does the read-back devgate then asks QEMU for (t=4 s), which drops the list. The second starts
  // 1.5 s after that read-back was sent (t=3.5 s), on the list still known; its blockdev-add, behind
  // the device_add in QEMU, is answered at t=5 s: after the drop, within its own bound (5.5 s). A race
  // is timed by nature: each margin is 0.5 s or more.
  await start(2_000);
  await connector.attachments();
  const sent: string[] = [];
  const execute = QmpClient.prototype.execute;
  const spy = jest.spyOn(QmpClient.prototype, 'execute').mockImplementation(function (this: QmpClient, ...args) {
    sent.push(args[0]);
    return execute.apply(this, args);
  });
  qemu.deviceAddMs = 5_000;
  const first = connector.attach('work', stick, stickSpec, 'ID-SDB');
  first.catch(() => undefined);
  await waitUntil(
    () => sent.includes('device_add') && sent.lastIndexOf('qom-list') > sent.indexOf('device_add'),
    5_000,
  );
  spy.mockRestore();
  qemu.deviceAddMs = 0;
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  const second = connector.attach('work', sdc, sdcSpec, 'ID-SDC');
  await expect(first).rejects.toMatchObject({ code: 'DG_QMP_TIMEOUT' });
  expect((await second).options['frontend-dev']).toBe('xvdj');
  expect([...qemu.nodes].sort()).toEqual(['dg-xvdi', 'dg-xvdj']);
  // The first went in late: both are attached, and a reading keeps both nodes.
  expect((await connector.attachments()).map((a) => a.port.portId).sort()).toEqual(['sdb', 'sdc']);
  expect([...qemu.nodes].sort()).toEqual(['dg-xvdi', 'dg-xvdj']);
});

it("timed-out attaches leave no subscriptions behind on the connection's events", async () => {
  // Counts who listens to each connection's events, as the connector gets them.
  let listening = 0;
  const connect = QmpClient.connect.bind(QmpClient);
  const spy = jest.spyOn(QmpClient, 'connect').mockImplementation(async (...args) => {
    const client = await connect(...args);
    const events = client.events$;
    Object.defineProperty(client, 'events$', {
      value: new Observable<QmpEvent>((subscriber) => {
        listening++;
        const subscription = events.subscribe(subscriber);
        return () => {
          listening--;
          subscription.unsubscribe();
        };
      }),
    });
    return client;
  });
  cleanup.defer(() => spy.mockRestore());
  await start(400);
  await connector.attachments();
  const afterReading = listening;
  // Each refused late: QEMU is read back, the attach undone and the list dropped (read again next time).
  qemu.deviceAddMs = 600;
  qemu.deviceAddRefusal = "Bus 'xhci.0' does not support hotplugging";
  for (let i = 0; i < 4; i++) {
    await expect(connector.attach('work', stick, stickSpec, 'ID-SDB')).rejects.toMatchObject({
      code: 'DG_QMP_TIMEOUT',
    });
  }
  expect(qemu.refused).toBe(4);
  await connector.attachments();
  expect(listening).toBe(afterReading);
});
