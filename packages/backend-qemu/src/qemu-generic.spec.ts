import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type AttachSpec, type Port, qemuDeviceSpec } from '@devgate/core';
import { type Pty, openPty } from '@devgate/testkit';
import { labDown, labUp } from './lab.js';
import { decodeQdevId } from './qemu-attach.js';
import { QemuConnector } from './qemu-connector.js';
import { genericNodeName, planQemuDevice } from './qemu-generic.js';

// The generic qemu-device kind against real QEMU (a paused lab VM, no guest OS): what is added is
// read back with qom-list and query-chardev, and a detach leaves nothing behind.
jest.setTimeout(60_000);

let dir: string;
let connector: QemuConnector;
let pty: Pty;
const port: Port = { devclass: 'serial', backend: 'dom0', portId: 'ttyUSB0' };

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-generic-'));
  const registryFile = path.join(dir, 'domains.json');
  await labUp(['work'], { registryFile, stateDir: path.join(dir, 'lab') });
  connector = new QemuConnector({ registryFile });
  pty = await openPty();
});

afterAll(async () => {
  connector?.dispose();
  pty?.close();
  await labDown(undefined, { registryFile: path.join(dir, 'domains.json') }).catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

const serialSpec = (filledPath?: string): AttachSpec => {
  const spec = qemuDeviceSpec({ device: 'usb-serial', chardev: 'serial', hostNode: 'char' }, { model: 'usb-serial' });
  return filledPath ? { ...spec, params: { ...spec.params, path: filledPath } } : spec;
};
const peripherals = async () =>
  (
    await connector.execute<{ name: string; type: string }[]>('work', 'qom-list', { path: '/machine/peripheral' })
  ).filter((c) => c.name.startsWith('dg-'));
const chardevs = async () =>
  (await connector.execute<{ label: string; filename: string }[]>('work', 'query-chardev')).filter((c) =>
    c.label.startsWith('dg-'),
  );

describe('the qemu-device kind', () => {
  it('is declared, so the kernel can refuse what QEMU cannot do before it asks', () => {
    expect(connector.attachKinds).toEqual(expect.arrayContaining(['block', 'usb-host', 'vfio-pci', 'qemu-device']));
  });

  it('adds the chardev on the node, then the device linked to it; reads back; detach removes both', async () => {
    const attachment = await connector.attach('work', port, serialSpec(pty.path), 'serial:0403:6001:A50285BI');
    expect(attachment).toEqual({
      port,
      frontend: 'work',
      deviceId: 'serial:0403:6001:A50285BI',
      options: { model: 'usb-serial' },
    });
    const [device] = await peripherals();
    expect(device.type).toBe('child<usb-serial>');
    expect(decodeQdevId(device.name)).toEqual(expect.objectContaining({ c: 'serial', p: 'ttyUSB0', k: 'qemu-device' }));
    const chardev = await connector.execute<string>('work', 'qom-get', {
      path: `/machine/peripheral/${device.name}`,
      property: 'chardev',
    });
    expect(chardev).toBe(device.name);
    expect(await chardevs()).toEqual([expect.objectContaining({ label: device.name, filename: 'serial' })]);
    expect(await connector.attachments()).toEqual([attachment]);

    await connector.detach('work', port);
    expect(await peripherals()).toEqual([]);
    expect(await chardevs()).toEqual([]);
  });

  it('leaves the VM as it was when the device is refused after its chardev was added', async () => {
    const spec = qemuDeviceSpec({ device: 'no-such-device', chardev: 'null' }, {});
    await expect(connector.attach('work', port, spec, 'x')).rejects.toMatchObject({ code: 'DG_QMP_COMMAND_FAILED' });
    expect(await peripherals()).toEqual([]);
    expect(await chardevs()).toEqual([]);
  });

  it('refuses a spec whose path the data path did not fill, or a property that names a host path', () => {
    expect(() => planQemuDevice(port, serialSpec(), 'x')).toThrow(/data path gave no path/);
    const sneaky = qemuDeviceSpec({ device: 'usb-serial', chardev: 'null', properties: { file: '/etc/shadow' } }, {});
    expect(() => planQemuDevice(port, sneaky, 'x')).toThrow(/plain word/);
    const fileChardev = { ...serialSpec(pty.path), params: { ...serialSpec(pty.path).params, chardev: 'file' } };
    expect(() => planQemuDevice(port, fileChardev, 'x')).toThrow(/chardev must be one of/);
  });

  it('names block nodes within QEMU’s 31 characters', () => {
    expect(genericNodeName('dg-' + 'x'.repeat(200)).length).toBeLessThanOrEqual(31);
  });
});
