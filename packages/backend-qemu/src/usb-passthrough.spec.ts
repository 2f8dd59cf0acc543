import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type DeviceManager, type Port, Kernel } from '@devgate/core';
import { blockModule } from '@devgate/driver-block';
import { usbModule } from '@devgate/driver-usb';
import { LocalHostSource, RecordedDevice, RecordedHostSource, loadRecording, rootsUnder } from '@devgate/host';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks, materializeHost, recordedFixture } from '@devgate/testkit';
import { labDown, labUp } from './lab.js';
import { decodeQdevId, planUsbHostAttach } from './qemu-attach.js';
import { type QemuModule, qemuModule } from './qemu-module.js';

// Real QEMU (paused, no guest OS). This machine has no USB bus; QEMU still accepts a usb-host
// device for a host device that is not there, and waits for it. So the devices come from
// recordings of real machines, and what reaches QEMU is read back with qom-get.
jest.setTimeout(60_000);

let dir: string;
let registryFile: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usb-'));
  registryFile = path.join(dir, 'domains.json');
  await labUp(['work', 'other'], { registryFile, stateDir: path.join(dir, 'lab') });
});

afterAll(async () => {
  await labDown(undefined, { registryFile }).catch(() => undefined);
  disposeAllLoopDisks();
  fs.rmSync(dir, { recursive: true, force: true });
});

const usb = (portId: string, backend = 'sys-usb'): Port => ({ devclass: 'usb', backend, portId });
const block = (portId: string, backend = 'sys-usb'): Port => ({ devclass: 'block', backend, portId });

/** devgate's devices in a domain's QEMU, decoded from their qdev ids, with the usb-host properties asked for. */
async function usbHostDevices(qemu: QemuModule, domain: string, properties: readonly string[]) {
  const children = await qemu.connector.execute<{ name: string; type: string }[]>(domain, 'qom-list', {
    path: '/machine/peripheral',
  });
  const found = [];
  for (const child of children.filter((c) => c.type === 'child<usb-host>')) {
    const values: Record<string, unknown> = {};
    for (const property of properties) {
      values[property] = await qemu.connector.execute(domain, 'qom-get', {
        path: `/machine/peripheral/${child.name}`,
        property,
      });
    }
    found.push({ id: child.name, record: decodeQdevId(child.name), ...values });
  }
  return found;
}

function startKernel(source: RecordedHostSource | LocalHostSource): {
  kernel: Kernel;
  manager: DeviceManager;
  qemu: QemuModule;
} {
  const qemu = qemuModule({ registryFile, unplugTimeoutMs: 2_000 });
  const kernel = new Kernel().load(blockModule, usbModule, qemu);
  kernel.registerSource(source);
  return { kernel, manager: kernel.start(), qemu };
}

/** Leaves the lab VMs clean even when a test failed half-way. */
async function release(manager: DeviceManager): Promise<void> {
  for (const domain of ['work', 'other']) await manager.detach(domain).catch(() => undefined);
}

describe('USB passthrough into real QEMU', () => {
  it('refuses every device of a recorded backend, block and USB: a recording has no data path', async () => {
    const { kernel, manager, qemu } = startKernel(
      new RecordedHostSource(recordedFixture('KIOXIA_TransMemory.txt'), 'sys-usb'),
    );
    try {
      for (const port of [usb('1-1.1.2'), block('sda'), block('sda1')]) {
        expect(manager.get(port)).toBeDefined();
        await expect(manager.attach({ frontend: 'work', port })).rejects.toMatchObject({
          code: 'DG_NOT_ATTACHABLE',
          message: expect.stringContaining('recording'),
        });
      }
      // Nothing reached QEMU: no usb-host device, no block node opened on this host.
      expect(await usbHostDevices(qemu, 'work', [])).toEqual([]);
      expect((await qemu.connector.queryBlock('work')).filter((b) => b.inserted)).toEqual([]);
    } finally {
      kernel.dispose();
    }
  });

  describe('a live backend (the Kinesis keyboard of usbkbd.umockdev laid out as a sysfs tree)', () => {
    let sysroot: string;
    beforeAll(() => {
      const recording = loadRecording(recordedFixture('usbkbd.umockdev'));
      sysroot = path.join(dir, 'usbkbd');
      try {
        materializeHost(recording.tree.devices(), sysroot);
      } finally {
        recording.dispose();
      }
    });
    const live = () => new LocalHostSource({ roots: rootsUnder(sysroot), backend: 'sys-usb', hotplug: 'static' });

    it('attaches it as usb-host on its bus and port with its identity, reads it back, detaches it', async () => {
      const { kernel, manager, qemu } = startKernel(live());
      try {
        const port = usb('1-1.5.4.2');
        const deviceId = manager.get(port)!.deviceId;
        const attached = await manager.attach({ frontend: 'work', port });
        expect(attached.attachment).toEqual({ frontend: 'work', options: {} });
        const [device, ...more] = await usbHostDevices(qemu, 'work', ['hostbus', 'hostport', 'vendorid', 'productid']);
        expect(more).toEqual([]);
        expect(device).toMatchObject({
          record: { c: 'usb', b: 'sys-usb', p: '1-1.5.4.2', d: deviceId, o: {} },
          hostbus: 1,
          hostport: '1.5.4.2', // busid 1-1.5.4.2: bus 1, ports 1.5.4.2
          vendorid: 0, // by port: no id filter
          productid: 0,
        });
        expect(await qemu.connector.attachments()).toEqual([{ port, frontend: 'work', deviceId, options: {} }]);
        await expect(manager.attach({ frontend: 'other', port })).rejects.toMatchObject({
          code: 'DG_ALREADY_ATTACHED',
        });
        await expect(manager.detach('work', port)).resolves.toEqual([port]);
        expect(await usbHostDevices(qemu, 'work', [])).toEqual([]);
        expect(manager.get(port)?.attachment).toBeUndefined();
      } finally {
        await release(manager);
        kernel.dispose();
      }
    });

    it('attaches by id (by=id), and refuses unknown options with Qubes’ message', async () => {
      const { kernel, manager, qemu } = startKernel(live());
      try {
        const port = usb('1-1.5.4.2');
        await expect(manager.attach({ frontend: 'work', port, options: { 'read-only': 'yes' } })).rejects.toMatchObject(
          {
            code: 'DG_UNSUPPORTED_OPTION',
            message: 'Unsupported option read-only',
          },
        );
        await expect(manager.attach({ frontend: 'work', port, options: { by: 'serial' } })).rejects.toMatchObject({
          code: 'DG_UNSUPPORTED_OPTION',
        });
        expect(await usbHostDevices(qemu, 'work', [])).toEqual([]);
        const attached = await manager.attach({ frontend: 'work', port, options: { by: 'id' } });
        expect(attached.attachment).toEqual({ frontend: 'work', options: { by: 'id' } });
        const [device] = await usbHostDevices(qemu, 'work', ['vendorid', 'productid', 'hostbus', 'hostport']);
        expect(device).toMatchObject({ vendorid: 0x05f3, productid: 0x0007, hostbus: 0, hostport: '' });
        expect(await manager.detach('work', undefined, 'usb')).toHaveLength(1);
      } finally {
        await release(manager);
        kernel.dispose();
      }
    });

    it('refuses when another device sits at that sysfs path now (vendor and product are checked)', async () => {
      const { kernel, manager, qemu } = startKernel(live());
      const uevent = path.join(sysroot, 'sys/bus/usb/devices/1-1.5.4.2/uevent');
      const original = fs.readFileSync(uevent, 'utf8');
      expect(original).toMatch(/^PRODUCT=5f3\/7\//m);
      try {
        fs.writeFileSync(uevent, original.replace(/^PRODUCT=.*$/m, 'PRODUCT=5f3/beef/100'));
        await expect(manager.attach({ frontend: 'work', port: usb('1-1.5.4.2') })).rejects.toMatchObject({
          code: 'DG_DEVICE_CHANGED',
        });
        expect(await usbHostDevices(qemu, 'work', [])).toEqual([]);
      } finally {
        fs.writeFileSync(uevent, original);
        kernel.dispose();
      }
    });
  });
});

describe('the kernel’s overlap check across classes: a USB stick and the disk under it are one resource', () => {
  let disk: LoopDisk;
  let sysroot: string;

  beforeAll(() => {
    // The KIOXIA stick (1-1.1.2) as recorded, with its disk and partition renamed after a real
    // loop device, so QEMU can open /dev/loopN while the kernel sees it under the stick's interface.
    disk = createLoopDisk({ sizeMiB: 8, partitions: [{ label: 'KIOXIA' }] });
    const recording = loadRecording(recordedFixture('KIOXIA_TransMemory.txt'));
    try {
      const records = recording.tree.devices().map((record) => {
        if (record.subsystem !== 'block') return record;
        const isPartition = record.properties.DEVTYPE === 'partition';
        const name = isPartition ? disk.partitions[0] : disk.name;
        const [major, minor] = fs.readFileSync(`/sys/class/block/${name}/dev`, 'utf8').trim().split(':');
        const devpath = record.devpath.replace(
          /\/block\/sda(\/sda1)?$/,
          `/block/${disk.name}${isPartition ? `/${name}` : ''}`,
        );
        return new RecordedDevice({
          devpath,
          subsystem: 'block',
          properties: { ...record.properties, DEVPATH: devpath, DEVNAME: `/dev/${name}`, MAJOR: major, MINOR: minor },
          attributes: {
            size: fs.readFileSync(`/sys/class/block/${name}/size`, 'utf8').trim(),
            ro: '0',
            removable: '1',
            ...(isPartition ? { partition: '1' } : {}),
          },
        });
      });
      sysroot = path.join(dir, 'kioxia');
      materializeHost(records, sysroot);
    } finally {
      recording.dispose();
    }
  });

  it('links the block devices to the stick through parent, and refuses overlapping attaches both ways', async () => {
    const source = new LocalHostSource({ roots: rootsUnder(sysroot), backend: 'sys-usb', hotplug: 'static' });
    const { kernel, manager, qemu } = startKernel(source);
    try {
      const stick = usb('1-1.1.2');
      const whole = block(disk.name);
      const part = block(disk.partitions[0]);
      expect(manager.get(whole)?.parent).toEqual(stick);
      expect(manager.get(part)?.parent).toEqual(whole);
      expect(manager.get(stick)).toMatchObject({
        port: stick,
        data: { 'vendor-id': '30de', children: `${disk.name},${disk.partitions[0]}` },
      });

      // The partition (two levels below the stick) goes to `work`: the stick cannot go anywhere.
      await manager.attach({ frontend: 'work', port: part });
      await expect(manager.attach({ frontend: 'other', port: stick })).rejects.toMatchObject({
        code: 'DG_OVERLAP',
        message: `Device sys-usb:1-1.1.2 overlaps sys-usb:${disk.partitions[0]}, which is attached to work`,
      });
      await expect(manager.attach({ frontend: 'work', port: stick })).rejects.toMatchObject({ code: 'DG_OVERLAP' });
      expect(await usbHostDevices(qemu, 'other', [])).toEqual([]);
      await manager.detach('work', part);

      // The reverse: the stick is passed through to `other`; neither its disk nor its partition can go anywhere.
      await manager.attach({ frontend: 'other', port: stick });
      const [passed] = await usbHostDevices(qemu, 'other', ['hostbus', 'hostport']);
      expect(passed).toMatchObject({ hostbus: 1, hostport: '1.1.2' });
      for (const port of [whole, part]) {
        await expect(manager.attach({ frontend: 'work', port })).rejects.toMatchObject({
          code: 'DG_OVERLAP',
          message: `Device sys-usb:${port.portId} overlaps sys-usb:1-1.1.2, which is attached to other`,
        });
      }
      const blockNodes = (await qemu.connector.queryBlock('work')).filter((b) =>
        b.inserted?.['node-name']?.startsWith('dg-'),
      );
      expect(blockNodes).toEqual([]);
      await manager.detach('other', stick);

      // Free again: the whole disk attaches (for real, from /dev/loopN) once nothing overlaps it.
      const attached = await manager.attach({ frontend: 'work', port: whole });
      expect(attached.attachment?.options['frontend-dev']).toBe('xvdi');
      await manager.detach('work', whole);
      expect(await qemu.connector.attachments()).toEqual([]);
    } finally {
      await release(manager);
      kernel.dispose();
    }
  });

  it('refuses the stick while its partition is mounted in the backend (a real mount), naming the partition', async () => {
    // The backend's mounts are this host's real ones.
    const proc = path.join(sysroot, 'proc');
    fs.rmSync(proc, { recursive: true, force: true });
    fs.symlinkSync('/proc', proc);
    const mountpoint = fs.mkdtempSync(path.join(dir, 'mnt-'));
    execFileSync('mount', ['-o', 'ro', `/dev/${disk.partitions[0]}`, mountpoint]);
    try {
      const { kernel, manager } = startKernel(
        new LocalHostSource({ roots: rootsUnder(sysroot), backend: 'sys-usb', hotplug: 'static' }),
      );
      try {
        await expect(manager.attach({ frontend: 'work', port: usb('1-1.1.2') })).rejects.toMatchObject({
          code: 'DG_DEVICE_IN_USE',
          message: `Device sys-usb:1-1.1.2 is in use in its backend (sys-usb:${disk.partitions[0]} is mounted)`,
        });
      } finally {
        kernel.dispose();
      }
    } finally {
      execFileSync('umount', [mountpoint]);
      fs.rmSync(proc);
      fs.mkdirSync(proc);
    }
  });
});

describe('planUsbHostAttach', () => {
  const port = usb('1-4');
  it('refuses specs QEMU would read as wildcards', () => {
    const specs: Record<string, string | number>[] = [
      { hostbus: 0, hostport: '4' },
      { hostbus: 1, hostport: '' },
      { hostbus: 1 },
      { vendorid: 0, productid: 1 },
      { vendorid: 0x46d, productid: 0x10000 },
      { vendorid: 0x46d, productid: 0xc52b, hostbus: 1 },
    ];
    for (const params of specs) {
      expect(() => planUsbHostAttach(port, { kind: 'usb-host', params, options: {} }, 'id')).toThrow(/usb-host/);
    }
    expect(
      planUsbHostAttach(port, { kind: 'usb-host', params: { hostbus: 2, hostport: '4' }, options: {} }, 'id').device,
    ).toMatchObject({ driver: 'usb-host', bus: 'xhci.0', hostbus: 2, hostport: '4' });
  });
});
