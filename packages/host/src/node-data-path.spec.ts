import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type DeviceInfo, type HostTree, QEMU_DEVICE_KIND, qemuDeviceSpec } from '@devgate/core';
import { hostDataPath } from './host-data-path';
import { type HostRoots, readHostTree, sysfsReader } from './sysfs-reader';

// /dev/null is char 1:3 on every Linux host: a sysfs whose dev/char/1:3 names it, over the real /dev.
let sys: string;
let roots: HostRoots;
beforeAll(() => {
  sys = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-node-path-'));
  fs.mkdirSync(path.join(sys, 'dev/char/1:3'), { recursive: true });
  fs.writeFileSync(path.join(sys, 'dev/char/1:3/uevent'), 'MAJOR=1\nMINOR=3\nDEVNAME=null\n');
  fs.mkdirSync(path.join(sys, 'dev/char/1:5'), { recursive: true });
  fs.writeFileSync(path.join(sys, 'dev/char/1:5/uevent'), 'MAJOR=1\nMINOR=5\nDEVNAME=../etc/passwd\n');
  roots = { sys, dev: '/dev', proc: '/proc', udevData: path.join(sys, 'none') };
});
afterAll(() => fs.rmSync(sys, { recursive: true, force: true }));

const device = (majorMinor: string): DeviceInfo => ({
  port: { devclass: 'serial', backend: 'dom0', portId: 'ttyUSB0' },
  deviceId: 'serial:x',
  interfaces: [],
  data: { 'major-minor': majorMinor },
});
const spec = (extra: Record<string, string> = {}) => {
  const s = qemuDeviceSpec({ device: 'usb-serial', chardev: 'serial', hostNode: 'char' }, {});
  return { ...s, params: { ...s.params, ...extra } };
};
const codeOf = (p: Promise<unknown>) =>
  p.then(
    () => 'resolved',
    (e: { code?: string }) => e.code,
  );

describe('the generic kinds’ data path on this host', () => {
  it('finds the node by the listed major:minor through sys/dev, checked by stat; a driver’s own path is dropped', async () => {
    const routed = await hostDataPath(roots, device('1:3'), spec({ path: '/etc/shadow' }));
    expect(routed.kind).toBe(QEMU_DEVICE_KIND);
    expect(routed.params.path).toBe('/dev/null');
  });

  it('refuses a node that is not the listed number, a name that leaves /dev, or no number at all', async () => {
    fs.mkdirSync(path.join(sys, 'dev/char/1:4'), { recursive: true });
    fs.writeFileSync(path.join(sys, 'dev/char/1:4/uevent'), 'DEVNAME=null\n'); // says null, but null is 1:3
    expect(await codeOf(hostDataPath(roots, device('1:4'), spec()))).toBe('DG_DEVICE_CHANGED');
    expect(await codeOf(hostDataPath(roots, device('1:5'), spec()))).toBe('DG_DEVICE_CHANGED');
    expect(await codeOf(hostDataPath(roots, device('9:9'), spec()))).toBe('DG_DEVICE_CHANGED');
    expect(await codeOf(hostDataPath(roots, { ...device('1:3'), data: {} }, spec()))).toBe('DG_DEVICE_CHANGED');
  });

  it('passes a spec that asks for no node, without any path', async () => {
    const plain = qemuDeviceSpec({ device: 'usb-serial', chardev: 'null' }, {});
    const routed = await hostDataPath(roots, device('1:3'), { ...plain, params: { ...plain.params, path: '/x' } });
    expect(routed.params).toEqual({ device: 'usb-serial', chardev: 'null' });
  });
});

describe('sysfs reading for drivers', () => {
  it('lists the subsystems drivers ask for, and reads attributes only under the root', () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-sys-'));
    try {
      const tty = path.join(root, 'sys/devices/pnp0/00:01/tty/ttyS0');
      fs.mkdirSync(tty, { recursive: true });
      fs.writeFileSync(path.join(tty, 'uevent'), 'MAJOR=4\nMINOR=64\nDEVNAME=ttyS0\n');
      fs.writeFileSync(path.join(tty, 'type'), '4\n');
      fs.mkdirSync(path.join(root, 'sys/class/tty'), { recursive: true });
      fs.symlinkSync('../../devices/pnp0/00:01/tty/ttyS0', path.join(root, 'sys/class/tty/ttyS0'));
      const r = {
        sys: path.join(root, 'sys'),
        dev: path.join(root, 'dev'),
        proc: path.join(root, 'proc'),
        udevData: '',
      };
      const names = (tree: HostTree) => tree.devices().map((d) => d.devpath);
      expect(names(readHostTree(r))).toEqual([]);
      expect(names(readHostTree(r, ['tty']))).toContain('/devices/pnp0/00:01/tty/ttyS0');
      const reader = sysfsReader(r);
      expect(reader.attribute('/devices/pnp0/00:01/tty/ttyS0', 'type')).toBe('4');
      expect(reader.attribute('/devices/../../etc', 'passwd')).toBeUndefined();
      expect(reader.attribute('/devices/pnp0/00:01/tty/ttyS0', '../../../../../etc/passwd')).toBeUndefined();
      expect(reader.entries('class/tty')).toEqual(['ttyS0']);
      expect(reader.entries('../..')).toEqual([]);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
