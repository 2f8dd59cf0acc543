/**
 * What devgated (and the CLI without it) adds to a kernel for third-party drivers: the services
 * devgate provides under the plugin API's tokens, and the driver packages the configuration names,
 * each loaded isolated. A refused package is logged with its coded error and listed by
 * `devgate drivers`; the other drivers run.
 */
import {
  type Kernel,
  type Logger,
  type ModuleReference,
  type ModuleStatus,
  NamesDatabase,
  SysfsReader,
  Logger as LoggerToken,
  labelOf,
  loadDriverPackages,
} from '@devgate/core';
import { type HostRoots, LOCAL_ROOTS, sysfsReader } from '@devgate/host';
import { systemUsbNames } from '@devgate/driver-usb';
import { systemPciNames } from '@devgate/driver-pci';

/** The system's names databases (hwdata's usb.ids and pci.ids), read on first use. */
export function systemNamesDatabase(): NamesDatabase {
  const usb = systemUsbNames();
  const pci = systemPciNames();
  return {
    vendor: (bus, vendorId) => (bus === 'usb' ? usb.vendor(vendorId) : pci.vendor(vendorId)),
    product: (bus, vendorId, productId) =>
      bus === 'usb' ? usb.product(vendorId, productId) : pci.device(vendorId, productId),
  };
}

/** Where what became of each package is logged: pino's shape (fields first), which devgated uses. */
export interface PackageLog {
  info(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

/** Registers what devgate provides to drivers, before any driver package is loaded. */
export function provideServices(kernel: Kernel, options: { log?: Logger; roots?: HostRoots } = {}): void {
  if (options.log) kernel.container.register(LoggerToken, { useValue: options.log });
  kernel.container.register(NamesDatabase, { useValue: systemNamesDatabase() });
  kernel.container.register(SysfsReader, { useValue: sysfsReader(options.roots ?? LOCAL_ROOTS) });
}

/** Loads the configured driver packages; logs what each became. */
export function loadConfiguredModules(
  kernel: Kernel,
  modules: readonly ModuleReference[],
  log?: PackageLog,
): ModuleStatus[] {
  const statuses = loadDriverPackages(kernel, modules);
  for (const status of statuses) if (status.state === 'loaded') log?.info(describe(status), 'driver package loaded');
  return statuses;
}

/** After start: every package the kernel refused (at load, or for a missing dependency). */
export function logRefusedModules(kernel: Kernel, log: PackageLog): void {
  for (const status of kernel.modules()) {
    if (status.state === 'refused')
      log.error({ ...describe(status), code: status.error?.code, err: status.error }, 'driver package refused');
  }
}

function describe(status: ModuleStatus): Record<string, unknown> {
  const origin = status.origin;
  return {
    module: status.id,
    package: labelOf(origin),
    ...(origin.kind === 'package' && origin.path ? { path: origin.path } : {}),
    classes: status.drivers,
  };
}
