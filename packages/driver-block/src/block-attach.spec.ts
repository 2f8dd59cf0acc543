import { type DeviceInfo, type DevgateError } from '@devgate/core';
import { blockAttachSpec } from './block-attach';

const device = (readOnly: boolean): DeviceInfo => ({
  port: { devclass: 'block', backend: 'dom0', portId: 'sdb1' },
  deviceId: 'x',
  interfaces: ['b******'],
  data: { 'read-only': readOnly, devnode: '/dev/sdb1' },
});

function message(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    return `${(error as DevgateError).code}: ${(error as Error).message}`;
  }
  return 'no error';
}

describe('blockAttachSpec', () => {
  it('defaults to the device’s own mode and a USB stick on the xHCI bus', () => {
    expect(blockAttachSpec(device(false), {})).toEqual({
      kind: 'block',
      params: { readOnly: false, devtype: 'disk', bus: 'usb' },
      options: { 'read-only': 'no' },
    });
    expect(blockAttachSpec(device(true), {}).options).toEqual({ 'read-only': 'yes' });
  });

  it('refuses rw on a read-only device with Qubes’ message', () => {
    expect(message(() => blockAttachSpec(device(true), { 'read-only': 'no' }))).toBe(
      'DG_READ_ONLY_DEVICE: This device can be attached only read-only',
    );
    expect(blockAttachSpec(device(true), { 'read-only': 'yes' }).params.readOnly).toBe(true);
  });

  it('validates frontend-dev, devtype and unknown options with Qubes’ messages', () => {
    expect(message(() => blockAttachSpec(device(false), { 'frontend-dev': 'hda' }))).toBe(
      'DG_UNSUPPORTED_OPTION: Invalid frontend-dev option value: hda',
    );
    expect(message(() => blockAttachSpec(device(false), { devtype: 'floppy' }))).toBe(
      "DG_UNSUPPORTED_OPTION: devtype option can only have 'disk' or 'cdrom' value",
    );
    expect(message(() => blockAttachSpec(device(false), { color: 'red' }))).toBe(
      'DG_UNSUPPORTED_OPTION: Unsupported option color',
    );
    expect(message(() => blockAttachSpec(device(false), { 'read-only': 'maybe' }))).toBe(
      'DG_UNSUPPORTED_OPTION: Unknown `read-only` option value: maybe',
    );
  });

  it('makes a CD read-only and reports its devtype', () => {
    const spec = blockAttachSpec(device(false), { devtype: 'cdrom', 'frontend-dev': 'xvdd', bus: 'virtio' });
    expect(spec.params).toMatchObject({ readOnly: true, devtype: 'cdrom', frontendDev: 'xvdd', bus: 'virtio' });
    expect(spec.options).toEqual({ 'read-only': 'yes', devtype: 'cdrom' });
  });
});
