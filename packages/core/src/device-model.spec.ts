import { type DeviceInfo, describeDevice, parseDeviceArgument } from './device-model';
import { DevgateError } from './errors';
import { trusted } from './sanitize';

const base: DeviceInfo = {
  port: { devclass: 'block', backend: 'dom0', portId: 'sdb1' },
  deviceId: '0000:0000::?******:None:1',
  interfaces: ['b******'],
  data: {},
};

describe('parseDeviceArgument', () => {
  it('splits backend, port and a device id that may itself hold colons', () => {
    expect(parseDeviceArgument('sys-usb:2-5')).toEqual({ backend: 'sys-usb', portId: '2-5' });
    expect(parseDeviceArgument('sys-usb:2-5:058f:3822::u0e0100')).toEqual({
      backend: 'sys-usb',
      portId: '2-5',
      deviceId: '058f:3822::u0e0100',
    });
  });

  it.each(['sdb1', ':sdb1', 'dom0:', ''])('rejects %j with a usage error', (arg) => {
    expect(() => parseDeviceArgument(arg)).toThrow(DevgateError);
    try {
      parseDeviceArgument(arg);
    } catch (error) {
      expect((error as DevgateError).code).toBe('DG_BAD_DEVICE_ARGUMENT');
      expect((error as DevgateError).kind).toBe('usage');
    }
  });
});

describe('describeDevice', () => {
  it('follows Qubes: category, vendor or manufacturer, product or name', () => {
    expect(describeDevice({ ...base, manufacturer: trusted('hosted by dom0'), name: trusted('Cruzer (DATA)') })).toBe(
      'Block_Storage: hosted by dom0 Cruzer (DATA)',
    );
    expect(describeDevice({ ...base, vendor: trusted('SanDisk'), product: trusted('Cruzer') })).toBe(
      'Block_Storage: SanDisk Cruzer',
    );
  });

  it('falls back to the parent, then to unknown', () => {
    const parent = { devclass: 'usb', backend: 'sys-usb', portId: '3-2' };
    expect(describeDevice({ ...base, parent })).toBe('Block_Storage: unknown vendor sub-device of sys-usb:3-2');
    expect(describeDevice({ ...base, interfaces: [] })).toBe('?******: unknown vendor unknown block device');
  });

  it('carries a driver’s warning about the device itself, and only then', () => {
    const stick = { ...base, interfaces: ['i010300', 'u080650'], product: trusted('Stick') };
    expect(describeDevice({ ...stick, data: { warning: 'BadUSB? also USB storage' } })).toBe(
      'Keyboard: unknown vendor Stick [BadUSB? also USB storage]',
    );
    expect(describeDevice({ ...stick, data: { warning: '' } })).toBe('Keyboard: unknown vendor Stick');
  });
});
