import { DevgateError, DriverContractError } from '@devgate/core';
import { decodeQdevId } from './qemu-attach';
import { planVfioAttach } from './vfio-attach';

const port = { devclass: 'pci', backend: 'dom0', portId: '00_14.0' };
const spec = {
  kind: 'vfio-pci',
  params: { host: '0000:00:14.0', vendorId: '8086', deviceId: 'a12f', group: '5' },
  options: { 'no-strict-reset': 'True' },
};

describe('vfio-pci on a QEMU frontend', () => {
  it('plugs the host function into the free root port, with the attachment in the qdev id', () => {
    const plan = planVfioAttach(port, spec, '0x8086:0xa12f::p0c0330', 'rp2');
    expect(plan.device).toEqual({ driver: 'vfio-pci', id: plan.qdevId, host: '0000:00:14.0', bus: 'rp2' });
    expect(decodeQdevId(plan.qdevId)).toEqual({
      c: 'pci',
      b: 'dom0',
      p: '00_14.0',
      d: '0x8086:0xa12f::p0c0330',
      o: { 'no-strict-reset': 'True' },
    });
    expect(plan.options).toEqual({ 'no-strict-reset': 'True' });
  });

  it('needs a free root port and an SBDF', () => {
    expect(() => planVfioAttach(port, spec, 'x', undefined)).toThrow(DevgateError);
    expect(() => planVfioAttach(port, spec, 'x', undefined)).toThrow('has no free PCIe root port');
    const bad = { ...spec, params: { host: '0000:00:14.0,x-foo=1' } };
    expect(() => planVfioAttach(port, bad, 'x', 'rp1')).toThrow(DriverContractError);
  });
});
