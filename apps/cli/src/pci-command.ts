import { DevgateError, Errors, parseDeviceArgument, portLabel } from '@devgate/core';
import { LOCAL_ROOTS, releaseGroupFromVfio, rootsUnder } from '@devgate/host';
import { type AccessOptions, type DeviceAccess } from './device-access.js';
import { type Io } from './io.js';

/**
 * `qvm-pci detach --reattach VM DEVICE`: detaches the device from the VM (if it still has it), then
 * gives its IOMMU group back from vfio-pci to the host's drivers. Qubes never gives a PCI device back
 * to dom0 by itself; devgate does it only when asked, and warns: whatever a VM left in the device
 * (firmware state, a queued DMA) now meets the host's driver.
 */
export async function detachAndReattach(
  access: DeviceAccess,
  options: AccessOptions,
  frontend: string,
  device: string,
  io: Io,
): Promise<void> {
  const { backend, portId } = parseDeviceArgument(device);
  const label = portLabel({ backend, portId });
  if (options.recording) {
    throw Errors.notAttachable({
      device: label,
      backend,
      reason: `${backend} is a recording: nothing there is bound to vfio-pci`,
    });
  }
  try {
    await access.detach('pci', frontend, device);
  } catch (error) {
    // Already detached (the VM stopped, or an attach failed after the bind): give it back all the same.
    if (!(error instanceof DevgateError && error.code === Errors.notAttached.code)) throw error;
    io.notice(`${label} was not attached to ${frontend}\n`);
  }
  const found = (await access.list({ devclass: 'pci', all: true })).find(
    (d) => d.backend === backend && d.portId === portId,
  );
  if (!found) throw Errors.unknownDevice({ backend, devclass: 'pci', port: portId });
  if (found.attachment) throw Errors.alreadyAttached({ device: label, frontend: found.attachment.frontend });
  if (backend !== (options.backend ?? 'dom0')) {
    throw Errors.notAttachable({
      device: label,
      backend,
      reason: `${backend} is not this host; its devices are not bound here`,
    });
  }
  const sbdf = String(found.data.sbdf ?? '');
  io.err(
    `Warning: ${label} (${sbdf}) goes back to the host's drivers; whatever the VM left in it now meets the host\n`,
  );
  const roots = options.sysroot ? rootsUnder(options.sysroot) : LOCAL_ROOTS;
  for (const released of await releaseGroupFromVfio(roots, sbdf, label)) {
    io.out(`${released.sbdf}: ${released.driver ?? 'no driver'}\n`);
  }
}
