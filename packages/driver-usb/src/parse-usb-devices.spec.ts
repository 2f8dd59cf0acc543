import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  type DeviceInfo,
  HostTree,
  MAX_TEXT_LENGTH,
  deviceCategory,
  describeDevice,
  interfaceMatches,
  recordOf,
} from '@devgate/core';
import { type Recording, loadRecording } from '@devgate/host';
import { UNSAFE_CHARACTERS, allStrings, recordedFixture, recordedFixturesDir } from '@devgate/testkit';
import { parseUsbDevices } from './parse-usb-devices';
import { usbIdsNames } from './usb-ids';

const loaded: Recording[] = [];
afterAll(() => loaded.forEach((r) => r.dispose()));

function devicesOf(name: string): Map<string, DeviceInfo> {
  const recording = loadRecording(recordedFixture(name));
  loaded.push(recording);
  return new Map(parseUsbDevices(recording.tree, 'sys-usb').map((d) => [d.port.portId, d]));
}

/** The USB ports each recording must list, in order; hubs and root hubs never. */
const EXPECTED_PORTS: Record<string, string[]> = {
  'usbkbd.umockdev': ['1-1.5.4.2'],
  'usbkbd.pcap.umockdev': ['1-3'],
  'canon-powershot-sx200.umockdev': ['1-1.5.2.3'],
  'sony-xperia-mini-pro.umockdev': ['1-1.5.2.4'],
  'fido2.umockdev': ['1-2.3'],
  'synaptics-touchpad.umockdev': [],
  'KIOXIA_TransMemory.txt': ['1-1.1.2'],
  'HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt': ['1-1', '1-2', '1-3', '1-4', '3-1', '8-1.3', '8-1.4'],
  'SHUTTLE_DH170_WITH_USB_DISK.txt': ['1-4', '1-9', '1-11', '1-14'],
  'LENOVO_T420.txt': ['1-1.3', '1-1.4', '1-1.6'],
  'TOSHIBA_NVME.txt': ['1-6', '1-9', '1-10', '1-11'],
  'REALTEK_CARD_READER_AND_NVME.txt': ['1-6', '1-11'],
  'HP_DVDRW_WITH_ISO9660_DISC.txt': [],
  'simple-nvme.tar.xz': [],
};

describe('parseUsbDevices on every recording', () => {
  it('covers every recording there is', () => {
    const recordings = fs
      .readdirSync(recordedFixturesDir())
      .filter((name) => name !== 'SOURCES.md' && !name.endsWith('.lsblk.json'));
    expect(Object.keys(EXPECTED_PORTS).sort()).toEqual(recordings.sort());
  });

  describe.each(Object.entries(EXPECTED_PORTS))('%s', (name, ports) => {
    let devices: Map<string, DeviceInfo>;
    beforeAll(() => (devices = devicesOf(name)));

    it('lists exactly the non-hub devices, sorted by port', () => {
      expect([...devices.keys()]).toEqual(ports);
    });

    it('keeps USB devices top-level, with ids, hub chains and controllers that agree', () => {
      for (const device of devices.values()) {
        expect(device.port).toEqual({ devclass: 'usb', backend: 'sys-usb', portId: expect.any(String) });
        expect(device.parent).toBeUndefined();
        const { 'vendor-id': vendorId, 'product-id': productId } = device.data;
        expect(device.deviceId).toBe(`${vendorId}:${productId}:${device.serial ?? ''}:${device.interfaces.join('')}`);
        expect(device.interfaces.every((code) => code.startsWith('u09'))).toBe(device.interfaces.length === 0);
        expect(vendorId).not.toBe('1d6b');
        expect(device.legacyDescription).toMatch(new RegExp(`^${vendorId}:${productId} \\S+$`));
        const hubs = String(device.data['hub-chain'] ?? '');
        expect(device.port.portId.startsWith(hubs.split(',').pop()!)).toBe(true);
        expect(device.data.busnum).toBe(Number(device.port.portId.split('-')[0]));
      }
    });
  });
});

describe('what the recordings say about each device', () => {
  it('usbkbd: the Kinesis keyboard behind three hubs, named from udev’s database', () => {
    const keyboard = devicesOf('usbkbd.umockdev').get('1-1.5.4.2')!;
    expect(keyboard).toMatchObject({
      deviceId: '05f3:0007::u030101u030000',
      interfaces: ['u030101', 'u030000'],
      // No string descriptors: udev's `ID_VENDOR_ENC=05f3` is the hex id standing in, not a name.
      manufacturer: undefined,
      name: undefined,
      vendor: 'PI Engineering, Inc.',
      product: 'Kinesis Advantage PRO MPC/USB Keyboard',
      legacyDescription: '05f3:0007 05f3_0007',
      hiddenReason: undefined,
    });
    expect(keyboard.data).toEqual({
      'vendor-id': '05f3',
      'product-id': '0007',
      busnum: 1,
      devnum: 9,
      controller: '0000:00:1a.0',
      'hub-chain': '1-1,1-1.5,1-1.5.4',
      speed: 12,
      authorized: true,
      children: 'input5,event5',
    });
    expect(describeDevice(keyboard)).toBe('Keyboard: PI Engineering, Inc. Kinesis Advantage PRO MPC/USB Keyboard');
  });

  it('usbkbd.pcap: the Holtek keyboard at low speed on xHCI, with an empty manufacturer string', () => {
    const keyboard = devicesOf('usbkbd.pcap.umockdev').get('1-3')!;
    expect(keyboard.deviceId).toBe('04d9:1603::u030101u030000');
    expect(keyboard.manufacturer).toBeUndefined();
    expect(keyboard.name).toBe('USB Keyboard');
    expect(keyboard.legacyDescription).toBe('04d9:1603 _USB_Keyboard');
    expect(keyboard.data).toMatchObject({ controller: '0000:00:14.0', speed: 1.5, busnum: 1, devnum: 11 });
    expect(keyboard.data['hub-chain']).toBeUndefined();
    expect(keyboard.data.children).toBeUndefined();
  });

  it('canon: a still-image camera with its serial in the id', () => {
    const camera = devicesOf('canon-powershot-sx200.umockdev').get('1-1.5.2.3')!;
    expect(camera.deviceId).toBe('04a9:31c0:C767F1C714174C309255F70E4A7B2EE2:u060101');
    expect(interfaceMatches('u06****', camera.interfaces[0])).toBe(true);
    expect(deviceCategory(camera.interfaces)).toBe('Camera');
    expect(camera).toMatchObject({ vendor: 'Canon Inc.', product: 'Canon Digital Camera' });
    expect(camera.data).toMatchObject({ 'hub-chain': '1-1,1-1.5,1-1.5.2', controller: '0000:00:1a.0', speed: 480 });
  });

  it('sony xperia: an MTP phone with a vendor-class interface', () => {
    const phone = devicesOf('sony-xperia-mini-pro.umockdev').get('1-1.5.2.4')!;
    expect(phone.deviceId).toBe('0fce:0166:0123456789ABCDEF:uffff00');
    expect(phone).toMatchObject({ vendor: 'Sony', product: 'MiniPro', serial: '0123456789ABCDEF' });
    expect(phone.legacyDescription).toBe('0fce:0166 Sony_MiniPro_0123456789ABCDEF');
  });

  it('fido2: the security key behind a Realtek hub, on an xHCI behind a PCI bridge, with its hidraw', () => {
    const key = devicesOf('fido2.umockdev').get('1-2.3')!;
    expect(key.deviceId).toBe('1050:0120::u030000');
    expect(key.data).toMatchObject({
      controller: '0000:05:00.3',
      'hub-chain': '1-2',
      children: 'hidraw5',
      devnum: 12,
      speed: 12,
    });
    expect(key).toMatchObject({ vendor: 'Yubico', product: 'Security Key by Yubico' });
  });

  it('KIOXIA: a stick on a Raspberry Pi’s platform controller, linked to its disk', () => {
    const stick = devicesOf('KIOXIA_TransMemory.txt').get('1-1.1.2')!;
    expect(stick.deviceId).toBe('30de:6544:0022CFF6BD70C670E32160AA:u080650');
    // An export-db dump has no sysfs attributes: no speed, no authorized flag.
    expect(stick.data).toEqual({
      'vendor-id': '30de',
      'product-id': '6544',
      busnum: 1,
      devnum: 6,
      controller: '3f980000.usb',
      'hub-chain': '1-1,1-1.1',
      children: 'sda,sda1',
    });
    expect(describeDevice(stick)).toBe('USB_Storage: KIOXIA TransMemory');
  });

  it('HP EliteBook: two sticks with their disks, the camera, ELAN, and a device known only by its interfaces', () => {
    const hp = devicesOf('HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt');
    const samsung = hp.get('8-1.3')!;
    expect(samsung.deviceId).toBe('090c:1000:0371623110008048:u080650');
    expect(samsung.data).toMatchObject({
      controller: '0000:c5:00.4',
      'hub-chain': '8-1',
      children: 'sda,sda1,sda2,sda3',
    });
    const usbDisk = hp.get('1-1')!;
    // Its vendor string is eight spaces: the name comes from udev's database instead.
    expect(usbDisk).toMatchObject({
      manufacturer: undefined,
      vendor: 'Kingston Technology Company Inc.',
      name: 'USB DISK 3.0',
    });
    expect(usbDisk.data).toMatchObject({ controller: '0000:c3:00.3', children: 'sdb,sdb1' });
    expect(hp.get('3-1')).toMatchObject({
      deviceId: '30c9:0095:200901010001:u0e0100u0e0200ufe0101',
      name: 'HP 5MP Camera',
    });
    expect(hp.get('1-4')).toMatchObject({ deviceId: '04f3:0c82::uff0000', vendor: 'ELAN', product: 'ELAN:ARM-M4' });
    expect(hp.get('8-1.4')!.name).toBe('USB 10/100/1000 LAN'); // decoded from `\x2f` escapes
    // The dump lacks 1-2's own entry but has its keyboard and mouse interfaces and its hidraw.
    expect(hp.get('1-2')).toMatchObject({
      deviceId: 'cafe:0000::u030101u030102',
      data: { 'inferred-from-interfaces': true, controller: '0000:c3:00.3', children: 'hidraw1' },
    });
  });

  it('SHUTTLE: the Primax keyboard with two HID interfaces, a USB disk and a card reader', () => {
    const shuttle = devicesOf('SHUTTLE_DH170_WITH_USB_DISK.txt');
    const keyboard = shuttle.get('1-9')!;
    expect(keyboard).toMatchObject({
      deviceId: '0461:0010::u030101u030000',
      vendor: 'Primax Electronics, Ltd',
      name: 'USB Keyboard',
      data: { children: 'hidraw0,input6,event4,hidraw1,input7,event5' },
    });
    // A disk whose product string is all spaces and whose vendor string ends in one.
    expect(shuttle.get('1-4')).toMatchObject({
      deviceId: 'abcd:1234::u080650',
      vendor: 'General',
      product: undefined,
      legacyDescription: 'abcd:1234 General_',
      data: { children: 'sdc,sdc1' },
    });
    expect(shuttle.get('1-14')).toMatchObject({
      deviceId: '05e3:0727:000000000208:u080650',
      data: { children: 'sdb' },
    });
  });

  it('LENOVO T420: camera, fingerprint reader and Bluetooth behind the rate-matching hubs, which are not listed', () => {
    const t420 = devicesOf('LENOVO_T420.txt');
    expect(t420.get('1-1.6')).toMatchObject({
      deviceId: '04f2:b221::u0e0100u0e0200',
      vendor: 'Chicony Electronics Co., Ltd.',
      data: { 'hub-chain': '1-1', controller: '0000:00:1a.0', children: 'input5,event5' },
    });
    expect(t420.get('1-1.3')).toMatchObject({ deviceId: '147e:2016::uff0000', product: 'Biometric Coprocessor' });
    expect(deviceCategory(t420.get('1-1.4')!.interfaces)).toBe('Bluetooth');
    expect([...t420.values()].some((d) => d.data['product-id'] === '0024')).toBe(false);
  });

  it('TOSHIBA: the Melfas touchscreen with its two hidraw nodes', () => {
    const toshiba = devicesOf('TOSHIBA_NVME.txt');
    expect(toshiba.get('1-9')).toMatchObject({
      deviceId: '1fd2:6003::u030000',
      vendor: 'Melfas',
      product: 'LGDisplay Incell Touch',
      data: { children: 'hidraw2,input15,event15,mouse2,hidraw0' },
    });
    // `ID_MODEL_ENC=5880` is a real string here: it differs from the product id 5834.
    expect(toshiba.get('1-10')).toMatchObject({
      product: '5880',
      deviceId: '0a5c:5834:0123456789ABCD:ufe0000u0b0000uff0000',
    });
  });

  it('REALTEK: the integrated webcam, whose vendor string is a serial number', () => {
    const webcam = devicesOf('REALTEK_CARD_READER_AND_NVME.txt').get('1-11')!;
    expect(webcam).toMatchObject({
      deviceId: '1bcf:28b8::u0e0100u0e0200',
      manufacturer: 'CN0J8NNP7248754LB0D1X02',
      name: 'Integrated_Webcam_HD',
      data: { children: 'input13,event12' },
    });
  });
});

describe('names from usb.ids', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usbids-'));
    fs.writeFileSync(
      path.join(dir, 'usb.ids'),
      '05f3  PI Engineering, Inc. (usb.ids)\n\t0007  Kinesis Advantage PRO (usb.ids)\n1050  Yubico.com\n\t0120  Yubikey\n',
    );
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('name devices without strings, ahead of udev’s database; device strings still come first', () => {
    const recording = loadRecording(recordedFixture('usbkbd.umockdev'));
    loaded.push(recording);
    const names = usbIdsNames(path.join(dir, 'usb.ids'));
    const [keyboard] = parseUsbDevices(recording.tree, 'dom0', names);
    expect(keyboard).toMatchObject({
      vendor: 'PI Engineering, Inc. (usb.ids)',
      product: 'Kinesis Advantage PRO (usb.ids)',
    });
    const fido = loadRecording(recordedFixture('fido2.umockdev'));
    loaded.push(fido);
    expect(parseUsbDevices(fido.tree, 'dom0', names)[0]).toMatchObject({
      vendor: 'Yubico',
      product: 'Security Key by Yubico',
    });
  });
});

describe('a device that is input and storage or network at once', () => {
  const ROOT = '/devices/pci0000:00/0000:00:14.0/usb2';
  const device = (busid: string, interfaces: string) =>
    recordOf(
      `${ROOT}/${busid}`,
      'usb',
      { DEVTYPE: 'usb_device', ID_USB_INTERFACES: interfaces },
      { idVendor: '0951', idProduct: busid === '2-1' ? '1666' : '1667', product: 'DataTraveler 3.0' },
    );
  const found = new Map(
    parseUsbDevices(
      new HostTree([device('2-1', ':080650:030101:'), device('2-2', ':080650:'), device('2-3', ':030101:030102:')]),
      'sys-usb',
      usbIdsNames('/nonexistent/usb.ids'),
    ).map((d) => [d.port.portId, d]),
  );

  it('warns wherever it is described: a stick that is also a keyboard gives a VM a keyboard too', () => {
    const badUsb = found.get('2-1')!;
    expect(badUsb.data.warning).toMatch(/^BadUSB\?/);
    expect(describeDevice(badUsb)).toMatch(/^USB_Storage: .* \[BadUSB\? .*input.*USB storage.*\]$/);
    expect(found.get('2-2')!.data.warning).toBeUndefined();
    expect(found.get('2-3')!.data.warning).toBeUndefined();
  });
});

describe('hostile devices', () => {
  const ROOT = '/devices/pci0000:00/0000:00:14.0/usb1';
  const payload = `\u001b[31mRED\u001b[0m <b>bold</b>\u0000nul ${'A'.repeat(100_000)}`;

  function hostileTree(): HostTree {
    return new HostTree([
      recordOf(ROOT, 'usb', { DEVTYPE: 'usb_device' }, { idVendor: '1d6b', idProduct: '0002', bDeviceClass: '09' }),
      recordOf(
        `${ROOT}/1-1`,
        'usb',
        {
          DEVTYPE: 'usb_device',
          ID_SERIAL: payload,
          ID_VENDOR_FROM_DATABASE: payload,
          ID_USB_INTERFACES: `:030101:${payload}:`,
        },
        {
          idVendor: '1234',
          idProduct: 'abcd',
          product: payload,
          manufacturer: payload,
          serial: `ser:${payload}`,
          speed: payload,
        },
      ),
      recordOf(`${ROOT}/1-1/1-1:1.0/input/input9`, 'input', {}),
      recordOf(`${ROOT}/1-1/1-1:1.0/input/in\u001bput10`, 'input', {}),
      // A device name that is no busid at all is not offered.
      recordOf(`${ROOT}/1-2\u001b[2J`, 'usb', { DEVTYPE: 'usb_device', PRODUCT: '1/2/3' }),
    ]);
  }

  it('comes out as inert, bounded text', () => {
    const devices = parseUsbDevices(hostileTree(), 'sys-usb', usbIdsNames('/nonexistent/usb.ids'));
    expect(devices.map((d) => d.port.portId)).toEqual(['1-1']);
    const [device] = devices;
    for (const [at, text] of allStrings(devices)) {
      expect([at, UNSAFE_CHARACTERS.test(text)]).toEqual([at, false]);
      expect(text.length).toBeLessThanOrEqual(MAX_TEXT_LENGTH + 32);
    }
    // Markup is kept as literal text (it is never interpreted), escapes and NUL are gone.
    expect(device.product).toMatch(/^RED <b>bold<\/b> nul A+…$/);
    expect(device.product!.length).toBe(MAX_TEXT_LENGTH);
    expect(device.deviceId).toMatch(/^1234:abcd:[A-Za-z0-9_.+-]+:u030101$/);
    expect(device.legacyDescription).toMatch(/^1234:abcd RED_<b>bold<\/b>_nul_A+…$/);
    expect(device.data.speed).toBeUndefined();
    expect(device.data.children).toBe('input9');
  });
});
