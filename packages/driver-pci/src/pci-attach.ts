import { type AttachSpec, type DeviceInfo, DriverContractError, Errors, portLabel } from '@devgate/core';
import { isSbdf } from './pci-address.js';

/** The attach spec kind of a PCI function handed to a VM through VFIO. */
export const VFIO_PCI_KIND = 'vfio-pci';

/**
 * How a PCI function is handed to a VM: through VFIO (kind `vfio-pci`). The backend's data path binds
 * the function's whole IOMMU group to vfio-pci (driver_override, unbind, drivers_probe, per device)
 * after checking the device is the one listed and the host has an IOMMU; the connector then plugs
 * `vfio-pci host=SBDF` into a free PCIe root port of the frontend (QEMU), or a libvirt
 * `<hostdev type='pci' managed='no'>` (@devgate/backend-libvirt).
 *
 * Options, as Qubes documents them for qvm-pci (`True`, `False` or absent):
 *   no-strict-reset  attach even though the function supports no reset (Qubes' strict reset refuses
 *                    it: state left by one VM would reach the next one);
 *   permissive       Xen's permissive config-space access. QEMU's vfio-pci virtualizes the config
 *                    space itself and has no such switch, so the option is kept and shown, and
 *                    changes nothing on QEMU.
 * Any other option is refused with Qubes' `Unsupported option <name>`.
 */
export function pciAttachSpec(device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec {
  const flags: Record<string, string> = {};
  for (const [option, value] of Object.entries(options)) {
    if (option !== 'no-strict-reset' && option !== 'permissive') throw Errors.unsupportedOption({ option });
    const flag = booleanOption(option, value);
    if (flag) flags[option] = 'True';
  }
  const sbdf = String(device.data.sbdf ?? '');
  if (!isSbdf(sbdf)) throw new DriverContractError('pci', `device ${portLabel(device.port)} has no SBDF`);
  const reset = String(device.data.reset ?? 'unknown');
  if ((reset === 'none' || reset === 'unknown') && flags['no-strict-reset'] !== 'True') {
    throw Errors.pciNoReset({ device: portLabel(device.port) });
  }
  return {
    kind: VFIO_PCI_KIND,
    params: {
      host: sbdf,
      vendorId: String(device.data['vendor-id'] ?? ''),
      deviceId: String(device.data['device-id'] ?? ''),
      ...(flags.permissive ? { permissive: true } : {}),
    },
    options: flags,
  };
}

/**
 * Qubes documents `True` and `False`; its templates test the value's truth, so users write `true`,
 * `yes` and `1` too. Those are taken, `False`-like values drop the option, anything else is refused
 * rather than guessed at.
 */
function booleanOption(option: string, value: string): boolean {
  const lower = value.toLowerCase();
  if (['true', 'yes', '1'].includes(lower)) return true;
  if (['false', 'no', '0', ''].includes(lower)) return false;
  throw Errors.unsupportedOption({
    option,
    message: `Invalid ${option} option value: ${value} (accepted values: True, False)`,
  });
}
