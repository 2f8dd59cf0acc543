import { NEVER, type Subscription, concat, of } from 'rxjs';
import { type DeviceInfo, type DeviceSource, DriverContractError, HostTree, recordOf } from '@devgate/core';
import { loadRecording } from '@devgate/host';
import { recordedFixture } from '@devgate/testkit';
import { parseUsbDevices } from './parse-usb-devices';
import { UsbDriver } from './usb-driver';

const NO_NAMES = { vendor: () => undefined, product: () => undefined };

function deviceOf(recording: string, portId: string): DeviceInfo {
  const loaded = loadRecording(recordedFixture(recording));
  try {
    return parseUsbDevices(loaded.tree, 'sys-usb').find((d) => d.port.portId === portId)!;
  } finally {
    loaded.dispose();
  }
}

describe('UsbDriver.attachSpec', () => {
  const driver = new UsbDriver(NO_NAMES);

  it('passes a device through by its host bus and port by default (busid 1-1.5.4.2: bus 1, port 1.5.4.2)', () => {
    const keyboard = deviceOf('usbkbd.umockdev', '1-1.5.4.2');
    expect(driver.attachSpec(keyboard, {})).toEqual({
      kind: 'usb-host',
      params: { hostbus: 1, hostport: '1.5.4.2' },
      options: {},
    });
    expect(driver.attachSpec(keyboard, { by: 'port' }).params).toEqual({ hostbus: 1, hostport: '1.5.4.2' });
  });

  it('takes the bus from busnum, on every bus (HP EliteBook 8-1.3)', () => {
    expect(driver.attachSpec(deviceOf('HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt', '8-1.3'), {})).toEqual(
      { kind: 'usb-host', params: { hostbus: 8, hostport: '1.3' }, options: {} },
    );
  });

  it('passes it by vendor and product id with by=id, and reports the option', () => {
    const yubikey = deviceOf('fido2.umockdev', '1-2.3');
    expect(driver.attachSpec(yubikey, { by: 'id' })).toEqual({
      kind: 'usb-host',
      params: { vendorid: 0x1050, productid: 0x0120 },
      options: { by: 'id' },
    });
  });

  it('refuses unknown options with Qubes’ message, and bad values of by', () => {
    const keyboard = deviceOf('usbkbd.umockdev', '1-1.5.4.2');
    expect(() => driver.attachSpec(keyboard, { 'read-only': 'yes' })).toThrow(
      expect.objectContaining({ code: 'DG_UNSUPPORTED_OPTION', message: 'Unsupported option read-only' }),
    );
    expect(() => driver.attachSpec(keyboard, { by: 'serial' })).toThrow(
      expect.objectContaining({
        code: 'DG_UNSUPPORTED_OPTION',
        message: "by option can only have 'port' or 'id' value",
      }),
    );
  });

  it('refuses by=id when the id is unknown or 0000, which QEMU would read as any device', () => {
    const keyboard = deviceOf('usbkbd.umockdev', '1-1.5.4.2');
    const withoutVendor = Object.fromEntries(Object.entries(keyboard.data).filter(([key]) => key !== 'vendor-id'));
    for (const data of [
      { ...keyboard.data, 'vendor-id': '0000' },
      { ...keyboard.data, 'product-id': '0000' },
      withoutVendor,
    ]) {
      expect(() => driver.attachSpec({ ...keyboard, data }, { by: 'id' })).toThrow(
        expect.objectContaining({ code: 'DG_USB_ID_UNKNOWN' }),
      );
    }
  });

  it('refuses by=id when another device of the backend has the same vendor and product id', () => {
    // Two identical sticks without a serial: QEMU's vendor/product filter would take whichever it
    // finds first, maybe the one the host has mounted or another VM holds.
    const ROOT = '/devices/pci0000:00/0000:00:14.0/usb2';
    const stick = (busid: string, serial?: string) =>
      recordOf(
        `${ROOT}/${busid}`,
        'usb',
        { DEVTYPE: 'usb_device', ID_USB_INTERFACES: ':080650:' },
        { idVendor: '0951', idProduct: '1666', busnum: '2', ...(serial ? { serial } : {}) },
      );
    // What the driver lists for the backend is what an attach by id is checked against.
    const listing = new UsbDriver(NO_NAMES);
    const subscriptions: Subscription[] = [];
    const list = (...records: ReturnType<typeof stick>[]) => {
      let devices: readonly DeviceInfo[] = [];
      // A live source: its stream stays open while the backend is read (the list goes when it ends).
      const trees$ = concat(of(new HostTree(records)), NEVER);
      const source = { backend: 'dom0', trees$ } as unknown as DeviceSource;
      subscriptions.push(listing.discover(source).subscribe((listed) => (devices = listed)));
      return new Map(devices.map((d) => [d.port.portId, d]));
    };
    const twins = list(stick('2-1'), stick('2-2'));
    expect(twins.get('2-2')!.deviceId).toBe(twins.get('2-1')!.deviceId);
    expect(() => listing.attachSpec(twins.get('2-2')!, { by: 'id' })).toThrow(
      expect.objectContaining({ code: 'DG_USB_ID_AMBIGUOUS', message: expect.stringContaining('2-1') }),
    );
    expect(() => listing.attachSpec(twins.get('2-1')!, { by: 'id' })).toThrow(
      expect.objectContaining({ code: 'DG_USB_ID_AMBIGUOUS', message: expect.stringContaining('2-2') }),
    );
    // A serial does not help: QEMU filters on vendor and product only.
    const serials = list(stick('2-1', 'AAAA'), stick('2-2', 'BBBB'));
    expect(() => listing.attachSpec(serials.get('2-1')!, { by: 'id' })).toThrow(
      expect.objectContaining({ code: 'DG_USB_ID_AMBIGUOUS' }),
    );
    // By port is exact, and one stick alone can go by id.
    expect(listing.attachSpec(twins.get('2-2')!, {}).params).toEqual({ hostbus: 2, hostport: '2' });
    expect(listing.attachSpec(list(stick('2-1')).get('2-1')!, { by: 'id' }).params).toEqual({
      vendorid: 0x0951,
      productid: 0x1666,
    });
    // A backend no longer read leaves no twins behind.
    const twinsAgain = list(stick('2-1'), stick('2-2'));
    subscriptions.forEach((subscription) => subscription.unsubscribe());
    expect(listing.attachSpec(twinsAgain.get('2-2')!, { by: 'id' }).params).toEqual({
      vendorid: 0x0951,
      productid: 0x1666,
    });
  });

  it('treats a port that is not a busid as a driver contract bug', () => {
    const keyboard = deviceOf('usbkbd.umockdev', '1-1.5.4.2');
    expect(() => driver.attachSpec({ ...keyboard, port: { ...keyboard.port, portId: 'usb1' } }, {})).toThrow(
      DriverContractError,
    );
  });
});
