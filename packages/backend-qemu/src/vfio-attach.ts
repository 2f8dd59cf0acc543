import { type AttachSpec, DriverContractError, Errors, type Port } from '@devgate/core';
import { encodeQdevId } from './qemu-attach.js';

const SBDF = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/;

/**
 * How long a guest may take to let go of a PCI device. PCIe native hot-unplug is an attention-button
 * press: Linux's pciehp waits 5 s (the time a user has to cancel) before it powers the slot off, and
 * a TCG guest is slower still. A machine that has not started (`-S`) drops the device at once.
 */
export const PCI_UNPLUG_TIMEOUT_MS = 20_000;

/** The QMP `device_add` that hands a host PCI function, already bound to vfio-pci, to a frontend. */
export interface VfioPlan {
  readonly qdevId: string;
  readonly device: Record<string, unknown>;
  readonly options: Readonly<Record<string, string>>;
}

/**
 * `vfio-pci host=SSSS:BB:DD.F` on a free PCIe root port: on q35 only a root port (or a switch's
 * downstream port) takes hot-plugged devices, so the frontend needs empty `pcie-root-port`s made in
 * advance (devgate's lab VMs have two). The qdev id carries the attachment, as for every device
 * devgate adds, so it is read back from QEMU after any restart.
 */
export function planVfioAttach(port: Port, spec: AttachSpec, deviceId: string, rootPort: string | undefined): VfioPlan {
  const host = spec.params.host;
  if (typeof host !== 'string' || !SBDF.test(host)) {
    throw new DriverContractError(port.devclass, 'vfio-pci needs host, an SBDF like 0000:00:14.0');
  }
  if (!rootPort) throw Errors.noFreeFrontend({ domain: 'the frontend', what: 'PCIe root port' });
  const options = { ...spec.options };
  const qdevId = encodeQdevId({ c: port.devclass, b: port.backend, p: port.portId, d: deviceId, o: options });
  return { qdevId, device: { driver: 'vfio-pci', id: qdevId, host, bus: rootPort }, options };
}
