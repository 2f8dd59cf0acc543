import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HostTree, type RawDeviceRecord, recordOf, sysname } from '@devgate/core';
import {
  type RecordedDevice,
  loadUdevExportDb,
  loadUmockdev,
  readHostTree,
  readUsage,
  rootsUnder,
} from '@devgate/host';
import { recordedFixture } from './fixtures.js';
import { addDevice, isKernelProperty, materializeHost, recordsUnder, removeDevice } from './materialize.js';

/**
 * What readHostTree lists (class/block, bus/usb, class/input, bus/pci); everything else is found
 * only as an ancestor of these. Keep in step with the reader's DEVICE_LISTS.
 */
const LISTED_SUBSYSTEMS = new Set(['block', 'usb', 'input', 'pci']);

let dir: string;
beforeEach(() => {
  // realpath: the reader compares resolved links with <dir>/sys/devices.
  dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-materialize-spec-')));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The kernel writes DEVNAME without /dev/; recordings have udev's /dev/ form. */
function withUdevDevname(properties: Readonly<Record<string, string>>): Record<string, string> {
  const { DEVNAME } = properties;
  return DEVNAME === undefined || DEVNAME.startsWith('/dev/')
    ? { ...properties }
    : { ...properties, DEVNAME: `/dev/${DEVNAME}` };
}

/**
 * Materializes the records, reads them back with the real sysfs reader and checks that every
 * device the reader can list (and each recorded ancestor) comes back with the same subsystem,
 * properties and text attributes. Returns the tree read back.
 */
function expectRoundTrip(records: readonly RecordedDevice[]): HostTree {
  const source = new HostTree(records);
  materializeHost(source, dir);
  const read = readHostTree(rootsUnder(dir));

  const expected = new Set<string>();
  for (const record of source.devices()) {
    if (!LISTED_SUBSYSTEMS.has(record.subsystem)) continue;
    expected.add(record.devpath);
    for (const ancestor of source.ancestors(record)) expected.add(ancestor.devpath);
  }
  expect(expected.size).toBeGreaterThan(0);
  expect(
    read
      .devices()
      .map((r) => r.devpath)
      .sort(),
  ).toEqual([...expected].sort());

  let attributesCompared = 0;
  for (const back of read.devices()) {
    const original = source.device(back.devpath) as RecordedDevice | undefined;
    expect(original).toBeDefined();
    expect(back.subsystem).toBe(original!.subsystem);
    expect(withUdevDevname(back.properties)).toEqual(original!.properties);
    for (const [name, value] of original!.attributes) {
      expect([back.devpath, name, back.attribute(name)]).toEqual([back.devpath, name, value]);
      attributesCompared++;
    }
  }
  // umockdev records carry attributes; export-db records have none.
  expect(attributesCompared > 0).toBe(records.some((r) => r.attributes.size > 0));
  return read;
}

describe('materializeHost round trip through readHostTree', () => {
  it.each([
    ['usbkbd.umockdev', 9],
    ['usbkbd.pcap.umockdev', 3],
    ['synaptics-touchpad.umockdev', 4],
    ['canon-powershot-sx200.umockdev', 6],
    ['sony-xperia-mini-pro.umockdev', 6],
    // hidraw5 and its hid parent are not under a listed class or bus, so the reader skips them.
    ['fido2.umockdev', 6],
  ])('%s (%i devices read back)', (name, count) => {
    const read = expectRoundTrip(loadUmockdev(recordedFixture(name)));
    expect(read.size).toBe(count);
  });

  it.each([
    ['TOSHIBA_NVME.txt', 'nvme0n1p4'],
    ['HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt', 'sdb1'],
  ])('%s', (name, someDevice) => {
    const records = loadUdevExportDb(recordedFixture(name));
    const read = expectRoundTrip(records);
    expect(read.devices('block').some((r) => sysname(r.devpath) === someDevice)).toBe(true);
    expect(read.devices('usb').length).toBe(new HostTree(records).devices('usb').length);
  });
});

describe('materializeHost layout', () => {
  let records: RecordedDevice[];
  const kbd = '/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2';
  beforeEach(() => {
    records = loadUmockdev(recordedFixture('usbkbd.umockdev'));
    materializeHost(records, dir);
  });
  const at = (...parts: string[]) => path.join(dir, ...parts);
  const read = (...parts: string[]) => fs.readFileSync(at(...parts), 'utf8');

  it('writes attributes with the trailing newline sysfs has, and binary attributes as bytes', () => {
    expect(read('sys', kbd, 'idVendor')).toBe('05f3\n');
    expect(read('sys', kbd, 'busnum')).toBe('1\n');
    expect(read('sys', kbd, 'bNumInterfaces')).toBe(' 2\n');
    const descriptors = fs.readFileSync(at('sys', kbd, 'descriptors'));
    expect(descriptors.length).toBe(77);
    expect(descriptors.subarray(0, 2)).toEqual(Buffer.from([0x12, 0x01]));
  });

  it('writes kernel properties to uevent, DEVNAME without /dev/', () => {
    const uevent = read('sys', kbd, 'uevent').split('\n');
    expect(uevent).toEqual(
      expect.arrayContaining(['DEVTYPE=usb_device', 'DRIVER=usb', 'MAJOR=189', 'MINOR=8', 'DEVNAME=bus/usb/001/009']),
    );
    expect(uevent).toEqual(expect.arrayContaining(['BUSNUM=001', 'DEVNUM=009', 'PRODUCT=5f3/7/320', 'TYPE=0/0/0']));
    expect(uevent.some((line) => /^(ID_|SUBSYSTEM=|TAGS=)/.test(line))).toBe(false);
  });

  it('links subsystems, classes, buses and sys/dev', () => {
    expect(fs.readlinkSync(at('sys', kbd, 'subsystem'))).toMatch(/^(\.\.\/)+bus\/usb$/);
    expect(fs.realpathSync(at('sys/bus/usb/devices/1-1.5.4.2'))).toBe(at('sys', kbd));
    expect(fs.realpathSync(at('sys/bus/pci/devices/0000:00:1a.0'))).toBe(at('sys/devices/pci0000:00/0000:00:1a.0'));
    expect(fs.readlinkSync(at('sys', kbd, '1-1.5.4.2:1.0/input/input5/event5/subsystem'))).toMatch(/class\/input$/);
    expect(fs.realpathSync(at('sys/class/input/event5'))).toBe(at('sys', kbd, '1-1.5.4.2:1.0/input/input5/event5'));
    expect(fs.realpathSync(at('sys/dev/char/189:8'))).toBe(at('sys', kbd));
    expect(fs.realpathSync(at('sys/dev/char/13:69'))).toBe(at('sys', kbd, '1-1.5.4.2:1.0/input/input5/event5'));
    expect(fs.readdirSync(at('sys/block'))).toEqual([]);
    // The recorded sysfs links come along when they stay inside sys/.
    expect(fs.readlinkSync(at('sys', kbd, 'driver'))).toBe('../../../../../../../../bus/usb/drivers/usb');
  });

  it('writes the udev database under udevd file names, and empty device nodes', () => {
    const data = fs.readdirSync(at('run/udev/data')).sort();
    expect(data).toEqual(
      expect.arrayContaining(['c189:8', 'c13:69', '+input:input5', '+usb:1-1.5.4.2:1.0', '+pci:0000:00:1a.0']),
    );
    const entry = read('run/udev/data/c13:69').split('\n');
    expect(entry).toEqual(
      expect.arrayContaining([
        'S:input/by-id/usb-05f3_0007-event-kbd',
        'E:ID_INPUT_KEYBOARD=1',
        'E:DEVNAME=/dev/input/event5',
        'E:SUBSYSTEM=input',
      ]),
    );
    expect(read('dev/bus/usb/001/009')).toBe('');
    expect(read('dev/input/event5')).toBe('');
  });

  it('puts only disks in sys/block', () => {
    const kioxia = loadUdevExportDb(recordedFixture('KIOXIA_TransMemory.txt'));
    const other = path.join(dir, 'kioxia');
    materializeHost(kioxia, other);
    expect(fs.readdirSync(path.join(other, 'sys/block'))).toEqual(['sda']);
    expect(fs.readdirSync(path.join(other, 'sys/class/block')).sort()).toEqual(['sda', 'sda1']);
    expect(fs.readdirSync(path.join(other, 'sys/dev/block')).sort()).toEqual(['8:0', '8:1']);
    expect(fs.readFileSync(path.join(other, 'run/udev/data/b8:1'), 'utf8')).toMatch(/^E:ID_FS_TYPE=vfat$/m);
    expect(fs.existsSync(path.join(other, 'dev/sda1'))).toBe(true);
  });
});

describe('materializeHost /proc', () => {
  it('writes mounts and swaps that the reader reads back', () => {
    const records = loadUdevExportDb(recordedFixture('KIOXIA_TransMemory.txt'));
    materializeHost(records, dir, { usage: { mounted: new Set(['8:1']), swaps: new Set(['/dev/sda2']) } });
    expect(fs.readFileSync(path.join(dir, 'proc/self/mountinfo'), 'utf8')).toMatch(/ 8:1 .* - ext4 \/dev\/sda1 rw$/m);
    const usage = readUsage(rootsUnder(dir));
    expect([...usage.mounted]).toEqual(['8:1']);
    expect([...usage.swaps]).toEqual(['/dev/sda2']);
  });

  it('takes the usage of a HostTree, and writes empty files without one', () => {
    const records = loadUdevExportDb(recordedFixture('KIOXIA_TransMemory.txt'));
    materializeHost(new HostTree(records, { mounted: new Set(['8:0']), swaps: new Set() }), dir);
    expect([...readHostTree(rootsUnder(dir)).usage.mounted]).toEqual(['8:0']);
    const bare = path.join(dir, 'bare');
    materializeHost(records, bare);
    expect(readUsage(rootsUnder(bare)).mounted.size).toBe(0);
    expect(fs.readFileSync(path.join(bare, 'proc/swaps'), 'utf8')).toMatch(/^Filename\s+Type/);
  });
});

describe('addDevice and removeDevice (hotplug)', () => {
  const kbd = '/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2';
  const names = (tree: HostTree) => tree.devices().map((r) => sysname(r.devpath));

  it('adds a device subtree to a running host and removes it again', () => {
    const records = loadUmockdev(recordedFixture('usbkbd.umockdev'));
    const keyboard = recordsUnder(records, kbd);
    expect(keyboard.map((r) => sysname(r.devpath)).sort()).toEqual(['1-1.5.4.2', '1-1.5.4.2:1.0', 'event5', 'input5']);
    materializeHost(
      records.filter((r) => !keyboard.includes(r)),
      dir,
    );
    expect(names(readHostTree(rootsUnder(dir)))).not.toContain('1-1.5.4.2');

    addDevice(dir, keyboard);
    const plugged = readHostTree(rootsUnder(dir));
    expect(plugged.size).toBe(9);
    expect(plugged.device(kbd)!.attribute('idProduct')).toBe('0007');

    const removed = removeDevice(dir, kbd);
    expect(removed.map((p) => sysname(p))).toEqual(['event5', 'input5', '1-1.5.4.2:1.0', '1-1.5.4.2']);
    const unplugged = readHostTree(rootsUnder(dir));
    expect(unplugged.size).toBe(5);
    expect(names(unplugged)).toContain('1-1.5.4');
    for (const gone of [
      'sys/bus/usb/devices/1-1.5.4.2',
      'sys/bus/usb/devices/1-1.5.4.2:1.0',
      'sys/class/input/event5',
      'sys/class/input/input5',
      'sys/dev/char/189:8',
      'sys/dev/char/13:69',
      'run/udev/data/c189:8',
      'run/udev/data/+usb:1-1.5.4.2:1.0',
      'dev/input/event5',
      'dev/bus/usb/001/009',
      `sys${kbd}`,
    ]) {
      expect([gone, fs.existsSync(path.join(dir, gone))]).toEqual([gone, false]);
    }
    expect(fs.existsSync(path.join(dir, 'sys/bus/usb/devices/1-1.5.4'))).toBe(true);
    expect(fs.existsSync(path.join(dir, 'run/udev/data/c189:6'))).toBe(true);
  });

  it('adds a single plain record (properties only)', () => {
    materializeHost([], dir);
    const disk: RawDeviceRecord = recordOf('/devices/virtual/block/loop7', 'block', {
      DEVTYPE: 'disk',
      MAJOR: '7',
      MINOR: '7',
      DEVNAME: '/dev/loop7',
      ID_FS_TYPE: 'ext4',
    });
    addDevice(dir, disk);
    const tree = readHostTree(rootsUnder(dir));
    const loop = tree.device('/devices/virtual/block/loop7')!;
    expect(loop.properties).toMatchObject({
      DEVTYPE: 'disk',
      DEVNAME: '/dev/loop7',
      ID_FS_TYPE: 'ext4',
      SUBSYSTEM: 'block',
    });
    expect(fs.readdirSync(path.join(dir, 'sys/block'))).toEqual(['loop7']);
    expect(removeDevice(dir, '/devices/virtual/block/loop7')).toEqual(['/devices/virtual/block/loop7']);
    expect(readHostTree(rootsUnder(dir)).size).toBe(0);
    expect(fs.readdirSync(path.join(dir, 'sys/block'))).toEqual([]);
  });

  it('refuses unsafe device paths', () => {
    expect(() => addDevice(dir, recordOf('/devices/../../x', 'block', {}))).toThrow(/not a device path/);
    expect(() => removeDevice(dir, '/devices/../..')).toThrow(/not a device path/);
    expect(() => addDevice(dir, recordOf('/devices/x', 'a/b', {}))).toThrow(/cannot write subsystem/);
  });
});

describe('isKernelProperty', () => {
  it.each([
    ['DEVTYPE', true],
    ['MAJOR', true],
    ['PRODUCT', true],
    ['HID_NAME', true],
    ['PCI_SLOT_NAME', true],
    ['MODALIAS', true],
    ['ID_MODEL', false],
    ['DM_NAME', false],
    ['UDISKS_IGNORE', false],
    ['DEVLINKS', false],
    ['TAGS', false],
    ['USEC_INITIALIZED', false],
    ['SUBSYSTEM', false],
    ['DEVPATH', false],
    ['net.ifnames', false],
    ['KEYBOARD_KEY_8a', false],
    ['__DEVCONTEXT', false],
  ])('%s -> %s', (key, kernel) => {
    expect(isKernelProperty(key)).toBe(kernel);
  });
});
