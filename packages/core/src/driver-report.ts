import { type DeviceManager } from './device-manager.js';
import { DevgateError, DriverContractError, Errors, errorCode } from './errors.js';
import { type Kernel, labelOf } from './kernel.js';
import { sanitizeText } from './sanitize.js';

/**
 * One row of `devgate drivers` (and `GET /v1/drivers`): a device class and where its driver came
 * from, with its health; or a driver package that was refused, with the coded error that says why.
 */
export interface DriverReport {
  /** The device class, or null for a package that was refused before it registered one. */
  readonly class: string | null;
  readonly description: string | null;
  /** The module's id (`driver-block`), or what the configuration named for a refused package. */
  readonly module: string;
  readonly origin: 'built-in' | 'package';
  /** `name@version` of the package, from its package.json. */
  readonly package: string | null;
  /** The file that was loaded. */
  readonly path: string | null;
  /** `faulted`: its discovery failed on some backend (retried with backoff); `refused`: not loaded. */
  readonly health: 'ok' | 'faulted' | 'refused';
  readonly error: { readonly code: string; readonly message: string } | null;
}

/** Every loaded driver and every refused package, in load order. */
export function driverReport(kernel: Kernel, manager?: DeviceManager): DriverReport[] {
  const rows: DriverReport[] = [];
  const running = new Map((manager?.drivers ?? []).map((d) => [d.id, d]));
  for (const module of kernel.modules()) {
    const origin = module.origin;
    const base = {
      module: module.id,
      origin: origin.kind,
      package:
        origin.kind === 'package' && origin.name ? `${origin.name}${origin.version ? `@${origin.version}` : ''}` : null,
      path: origin.kind === 'package' ? (origin.path ?? null) : null,
    };
    if (module.state === 'refused') {
      const error = module.error ?? Errors.moduleLoadFailed({ module: labelOf(origin), reason: 'refused' });
      rows.push({
        class: null,
        description: null,
        ...base,
        health: 'refused',
        error: { code: error.code, message: error.message },
      });
      continue;
    }
    for (const id of module.drivers) {
      const driver = running.get(id);
      const fault = manager?.faults().find((f) => f.driverId === id);
      rows.push({
        class: id,
        description: sanitizeText(driver?.manifest.description, 200) ?? null,
        ...base,
        health: fault ? 'faulted' : 'ok',
        error: fault ? faultError(fault.driverId, fault.sourceId, fault.error) : null,
      });
    }
  }
  return rows;
}

function faultError(driverId: string, source: string, error: Error): { code: string; message: string } {
  if (error instanceof DevgateError) return { code: error.code, message: error.message };
  // A contract error names its driver already; the kernel's (devices it left out) may name several.
  const reason =
    (error instanceof DriverContractError ? sanitizeText(error.reason, 1000) : sanitizeText(error.message, 300)) ??
    error.name;
  const coded = Errors.driverFault({ driverId, source, reason });
  return { code: errorCode(error) === 'DG_INTERNAL' ? coded.code : errorCode(error), message: coded.message };
}
