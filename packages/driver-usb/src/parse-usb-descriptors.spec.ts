import { createHash } from 'node:crypto';
import { HostTree } from '@devgate/core';
import { RecordedDevice } from '@devgate/host';
import { parseUsbDescriptors } from './parse-usb-descriptors';
import { usbGuardDevices } from './usbguard-devices';

const bytes = (hex: string) => Uint8Array.from(Buffer.from(hex, 'hex'));

// Test vectors from USBGuard's own test suite (USBGuard/usbguard, src/Tests/UseCase/devices.umockdev
// and 003_cli_devices_umockdev.sh, which looks these two hashes up in `usbguard list-devices`).
const DOCK_1_4 = {
  devpath: '/devices/pci0000:00/0000:00:14.0/usb1/1-4',
  idVendor: '17ef',
  idProduct: '305a',
  product: 'Lenovo ThinkPad WS Dock',
  descriptors: '1201100209000140EF175A3010500102000109021900010100E0000904000001090000000705810301000C',
  hash: '2y2qS3rcuMr1Ye5knWsbD8CGzPtrs+eiRR/haro7+Ng=',
};
const TRACKBALL_1_4_2 = {
  devpath: '/devices/pci0000:00/0000:00:14.0/usb1/1-4/1-4.2',
  idVendor: '047d',
  idProduct: '2048',
  product: 'Kensington Eagle Trackball',
  descriptors:
    '12010002000000087D04482000060102000109022200010100A0320904000001030102000921110100012252000705810308000A',
  hash: 'D3deklX12Ir3kJPfUZ5AQNwHeZn1bwtPkQkw6e+8B38=',
};
const ROOT_HUB = {
  devpath: '/devices/pci0000:00/0000:00:14.0/usb1',
  idVendor: '1d6b',
  idProduct: '0002',
  product: 'xHCI Host Controller',
  serial: '0000:00:14.0',
  descriptors: '12010002090001406B1D020015040302010109021900010100E0000904000001090000000705810304000C',
};

function usbRecord(init: {
  devpath: string;
  idVendor: string;
  idProduct: string;
  product: string;
  serial?: string;
  descriptors: string;
}) {
  return new RecordedDevice({
    devpath: init.devpath,
    subsystem: 'usb',
    properties: { DEVTYPE: 'usb_device' },
    attributes: {
      idVendor: init.idVendor,
      idProduct: init.idProduct,
      product: init.product,
      ...(init.serial !== undefined ? { serial: init.serial } : {}),
    },
    binaryAttributes: new Map([['descriptors', bytes(init.descriptors)]]),
  });
}

describe('parseUsbDescriptors', () => {
  it('reads ids and every interface descriptor, alternate settings included', () => {
    // The Lenovo hub of usbkbd.umockdev: one interface with two alternate settings.
    const hub = parseUsbDescriptors(
      bytes(
        '1201000209000240EF17051001000000000109022900010100E0010904000001090001000705810301000C0904000101090002000705810301000C',
      ),
    );
    expect(hub).toMatchObject({ vendorId: 0x17ef, productId: 0x1005, deviceClass: 9, configurations: 1 });
    expect(hub.interfaces).toEqual(['09:00:01', '09:00:02']);
  });

  it('zeroes a Linux root hub’s bcdDevice in the hash input only', () => {
    const parsed = parseUsbDescriptors(bytes(ROOT_HUB.descriptors));
    expect(parsed.bcdDevice).toBe(0x0415);
    expect([parsed.hashInput[12], parsed.hashInput[13]]).toEqual([0, 0]);
    const other = parseUsbDescriptors(bytes(DOCK_1_4.descriptors));
    expect(Buffer.from(other.hashInput).toString('hex').toUpperCase()).toBe(DOCK_1_4.descriptors);
  });

  it.each([
    ['', /no device descriptor/],
    ['12', /header is cut short at byte 0/],
    ['0101', /bLength 1 is shorter than a header/],
    ['1201100209', /runs past the end/],
    ['1101100209000140EF175A301050010200', /a device descriptor of 17 bytes/],
    [DOCK_1_4.descriptors + DOCK_1_4.descriptors.slice(0, 36), /a second device descriptor/],
    ['0902190001010000E000', /configuration descriptor before the device descriptor/],
    [DOCK_1_4.descriptors.slice(0, 36) + '090400000109000000', /interface descriptor outside a configuration/],
    [DOCK_1_4.descriptors.slice(0, 54) + '0705810301000C', /endpoint descriptor outside an interface/],
    [DOCK_1_4.descriptors.slice(0, 72) + '08058103010000000C'.slice(0, 16), /an endpoint descriptor of 8 bytes/],
  ])('refuses %s (DG_USB_DESCRIPTORS_INVALID)', (hex, reason) => {
    expect(() => parseUsbDescriptors(bytes(hex), '1-4')).toThrow(
      expect.objectContaining({ code: 'DG_USB_DESCRIPTORS_INVALID', message: expect.stringMatching(reason) }),
    );
  });

  it('survives random and mutated input: a result or DG_USB_DESCRIPTORS_INVALID, nothing else', () => {
    let seed = 0x5eed;
    const random = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    const base = bytes(TRACKBALL_1_4_2.descriptors);
    for (let i = 0; i < 5000; i++) {
      const input =
        i % 2 === 0
          ? Uint8Array.from({ length: Math.floor(random() * 64) }, () => Math.floor(random() * 256))
          : base
              .map((b) => (random() < 0.05 ? Math.floor(random() * 256) : b))
              .subarray(0, Math.floor(random() * (base.length + 1)));
      try {
        const parsed = parseUsbDescriptors(input);
        for (const type of parsed.interfaces) expect(type).toMatch(/^[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}$/);
        expect(parsed.hashInput.length).toBe(input.length);
      } catch (error) {
        expect(error).toMatchObject({ code: 'DG_USB_DESCRIPTORS_INVALID' });
      }
    }
  });
});

describe('USBGuard device hashes', () => {
  it('match the hashes in USBGuard’s own test suite, and a child’s parent-hash is its hub’s hash', () => {
    const tree = new HostTree([usbRecord(ROOT_HUB), usbRecord(DOCK_1_4), usbRecord(TRACKBALL_1_4_2)]);
    const byPort = new Map(usbGuardDevices(tree).map((entry) => [entry.port, entry]));
    expect([...byPort.keys()]).toEqual(['usb1', '1-4', '1-4.2']);
    expect(byPort.get('1-4')!.device).toMatchObject({
      id: '17ef:305a',
      name: 'Lenovo ThinkPad WS Dock',
      hash: DOCK_1_4.hash,
    });
    expect(byPort.get('1-4.2')!.device).toMatchObject({ hash: TRACKBALL_1_4_2.hash, parentHash: DOCK_1_4.hash });
    // A root hub's parent hash is the hash of its controller's sysfs path.
    // A root hub's parent hash is USBGuard's hashString(parent sysfs path).
    const controller = createHash('sha256').update('/devices/pci0000:00/0000:00:14.0').digest('base64');
    expect(byPort.get('usb1')!.device).toMatchObject({
      parentHash: controller,
      viaPort: ['usb1'],
      serial: '0000:00:14.0',
    });
    expect(byPort.get('usb1')!.isRootHub).toBe(true);
  });
});
