import { join } from 'node:path';
import { type AttachSpec, type Port, frontendNames } from '@devgate/core';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { labDown, labUp } from './lab.js';
import { decodeQdevId, encodeQdevId } from './qemu-attach.js';
import { QemuConnector, type QemuBlockInfo } from './qemu-connector.js';
import { Cleanup } from './testing/fixtures.js';

// Real QEMU (paused, no guest OS) and real loop devices.
jest.setTimeout(30_000);

const cleanup = new Cleanup();
let connector: QemuConnector;
let disk: LoopDisk;
let roDisk: LoopDisk;

const port = (portId: string): Port => ({ devclass: 'block', backend: 'dom0', portId });
const spec = (
  path: string,
  params: Record<string, string | boolean> = {},
  options: Record<string, string> = { 'read-only': 'no' },
) => ({
  kind: 'block',
  params: { path, readOnly: false, devtype: 'disk', bus: 'usb', ...params },
  options,
});
const nodes = async () =>
  (await connector.queryBlock('front'))
    .filter((b: QemuBlockInfo) => b.inserted?.['node-name']?.startsWith('dg-'))
    .map((b) => ({ node: b.inserted!['node-name'], file: b.inserted!.file, ro: b.inserted!.ro }));

beforeAll(async () => {
  const dir = await cleanup.tempDir();
  const registryFile = join(dir, 'domains.json');
  const [{ pid }] = await labUp(['front'], { registryFile, stateDir: join(dir, 'lab') });
  cleanup.pid(pid);
  cleanup.defer(() => labDown(undefined, { registryFile }));
  connector = new QemuConnector({ registryFile, unplugTimeoutMs: 1_000 });
  cleanup.defer(() => connector.dispose());
  disk = createLoopDisk({ sizeMiB: 32, partitions: [{ sizeMiB: 10 }, {}] });
  roDisk = createLoopDisk({ sizeMiB: 8, readOnly: true });
});
afterAll(async () => {
  await cleanup.run();
  disposeAllLoopDisks();
});

/** Attaches to the lab VM `front`, recording a device id made from the port. */
const attachAs = (p: Port, s: AttachSpec) => connector.attach('front', p, s, `id-${p.portId}`);

describe('block attach over QMP', () => {
  it('attaches a partition as a USB stick named xvdi, reads it back, and detaches it', async () => {
    const p1 = `/dev/${disk.partitions[0]}`;
    const attached = await attachAs(port(disk.partitions[0]), spec(p1));
    expect(attached.options).toEqual({ 'read-only': 'no', 'frontend-dev': 'xvdi' });
    expect(await nodes()).toEqual([{ node: 'dg-xvdi', file: p1, ro: false }]);
    expect(await connector.attachments()).toEqual([
      {
        port: port(disk.partitions[0]),
        frontend: 'front',
        deviceId: `id-${disk.partitions[0]}`,
        options: { 'read-only': 'no', 'frontend-dev': 'xvdi' },
      },
    ]);

    // The next one takes the next name, in Qubes' order.
    const p2 = `/dev/${disk.partitions[1]}`;
    const second = await attachAs(port(disk.partitions[1]), spec(p2));
    expect(second.options['frontend-dev']).toBe('xvdj');

    await connector.detach('front', port(disk.partitions[0]));
    await connector.detach('front', port(disk.partitions[1]));
    expect(await nodes()).toEqual([]);
    expect(await connector.attachments()).toEqual([]);
  });

  it('opens a read-only device read-only', async () => {
    await attachAs(port(roDisk.name), spec(roDisk.device, { readOnly: true }, { 'read-only': 'yes' }));
    expect(await nodes()).toEqual([{ node: 'dg-xvdi', file: roDisk.device, ro: true }]);
    await connector.detach('front', port(roDisk.name));
  });

  it('attaches a CD as xvdd behind a USB bulk-only transport', async () => {
    const cd = await attachAs(
      port(roDisk.name),
      spec(roDisk.device, { readOnly: true, devtype: 'cdrom' }, { 'read-only': 'yes', devtype: 'cdrom' }),
    );
    expect(cd.options).toEqual({ 'read-only': 'yes', devtype: 'cdrom', 'frontend-dev': 'xvdd' });
    await connector.detach('front', port(roDisk.name));
    expect(await nodes()).toEqual([]);
  });

  it('refuses a frontend name already in use, changing nothing', async () => {
    await attachAs(port(disk.partitions[0]), spec(`/dev/${disk.partitions[0]}`));
    await expect(
      attachAs(port(disk.partitions[1]), spec(`/dev/${disk.partitions[1]}`, { frontendDev: 'xvdi' })),
    ).rejects.toMatchObject({ code: 'DG_FRONTEND_DEV_IN_USE' });
    expect((await nodes()).map((n) => n.node)).toEqual(['dg-xvdi']);
    await connector.detach('front', port(disk.partitions[0]));
  });

  it('cleans up the block node when device_add fails', async () => {
    await expect(attachAs(port(disk.name), spec('/dev/does-not-exist-devgate'))).rejects.toMatchObject({
      code: 'DG_QMP_COMMAND_FAILED',
    });
    expect(await nodes()).toEqual([]);
  });

  it('attaches virtio-blk on a free root port; without a guest the unplug is never acknowledged', async () => {
    await attachAs(port(disk.partitions[1]), spec(`/dev/${disk.partitions[1]}`, { bus: 'virtio' }));
    const peripherals = await connector.execute<{ type: string }[]>('front', 'qom-list', {
      path: '/machine/peripheral',
    });
    expect(peripherals.filter((p) => p.type === 'child<virtio-blk-pci>')).toHaveLength(1);
    // The next one goes to the other root port, and a third finds none free.
    await attachAs(port(disk.name), spec(disk.device, { bus: 'virtio' }));
    await expect(
      attachAs(port(roDisk.name), spec(roDisk.device, { bus: 'virtio', readOnly: true })),
    ).rejects.toMatchObject({ code: 'DG_NO_FREE_FRONTEND' });
    await expect(connector.detach('front', port(disk.partitions[1]))).rejects.toMatchObject({
      code: 'DG_DETACH_TIMEOUT',
    });
    // The truth stays visible: still attached.
    expect((await connector.attachments()).map((a) => a.port.portId).sort()).toEqual(
      [disk.name, disk.partitions[1]].sort(),
    );
  });
});

describe('qdev ids', () => {
  it('round-trip the attachment and ignore foreign ids', () => {
    const record = { c: 'block', b: 'sys-usb', p: 'sda1', o: { 'read-only': 'no', 'frontend-dev': 'xvdi' } };
    const id = encodeQdevId(record);
    expect(id).toMatch(/^dg-[A-Za-z0-9_-]+$/);
    expect(id.length).toBeLessThan(80);
    expect(decodeQdevId(id)).toEqual(record);
    expect(decodeQdevId('xhci')).toBeUndefined();
    expect(decodeQdevId('dg-zz')).toBeUndefined();
    expect(decodeQdevId('dg-bot-xvdd')).toBeUndefined();
  });

  it('name frontends in Qubes order: xvdi..xvdz, xvdaa.., xvda..xvdh last', () => {
    const names = [...frontendNames()];
    expect(names.slice(0, 3)).toEqual(['xvdi', 'xvdj', 'xvdk']);
    expect(names[18]).toBe('xvdaa');
    expect(names.slice(-2)).toEqual(['xvdg', 'xvdh']);
    expect(new Set(names).size).toBe(names.length);
  });
});
