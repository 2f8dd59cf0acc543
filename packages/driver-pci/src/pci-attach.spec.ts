import { type DeviceInfo, DevgateError } from '@devgate/core';
import { pciAttachSpec } from './pci-attach';

function controller(reset: string): DeviceInfo {
  return {
    port: { devclass: 'pci', backend: 'dom0', portId: '00_14.0' },
    deviceId: '0x8086:0xa12f::p0c0330',
    interfaces: ['p0c0330'],
    data: { sbdf: '0000:00:14.0', 'vendor-id': '8086', 'device-id': 'a12f', reset },
  };
}

function codeOf(work: () => unknown): string | undefined {
  try {
    work();
  } catch (error) {
    return error instanceof DevgateError ? `${error.code}: ${error.message}` : String(error);
  }
  return undefined;
}

describe('vfio-pci attach specs', () => {
  it('names the host function, and reports only the options given', () => {
    expect(pciAttachSpec(controller('flr'), {})).toEqual({
      kind: 'vfio-pci',
      params: { host: '0000:00:14.0', vendorId: '8086', deviceId: 'a12f' },
      options: {},
    });
    expect(pciAttachSpec(controller('pm,bus'), { permissive: 'True' })).toEqual({
      kind: 'vfio-pci',
      params: { host: '0000:00:14.0', vendorId: '8086', deviceId: 'a12f', permissive: true },
      options: { permissive: 'True' },
    });
  });

  it('refuses a function without reset unless -o no-strict-reset=True (Qubes’ strict reset)', () => {
    expect(codeOf(() => pciAttachSpec(controller('none'), {}))).toBe(
      'DG_PCI_NO_RESET: Device dom0:00_14.0 does not support any reset; a VM could leave state in it for the next one',
    );
    expect(codeOf(() => pciAttachSpec(controller('unknown'), { 'no-strict-reset': 'False' }))).toMatch(
      /^DG_PCI_NO_RESET/,
    );
    expect(pciAttachSpec(controller('none'), { 'no-strict-reset': 'True' }).options).toEqual({
      'no-strict-reset': 'True',
    });
    expect(pciAttachSpec(controller('none'), { 'no-strict-reset': 'true' }).options).toEqual({
      'no-strict-reset': 'True',
    });
  });

  it('refuses unknown options and values with Qubes’ wording', () => {
    expect(codeOf(() => pciAttachSpec(controller('flr'), { 'read-only': 'yes' }))).toBe(
      'DG_UNSUPPORTED_OPTION: Unsupported option read-only',
    );
    expect(codeOf(() => pciAttachSpec(controller('flr'), { permissive: 'maybe' }))).toBe(
      'DG_UNSUPPORTED_OPTION: Invalid permissive option value: maybe (accepted values: True, False)',
    );
  });
});
