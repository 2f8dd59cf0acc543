/**
 * What @devgate/backend-qemu contributes to a kernel: one Connector (QMP). It brings no device
 * class driver, device source or policy hook. The QMP client, the domain registry and the lab are
 * library API for the CLI and the daemon, not kernel registrations.
 */
import { Disposable, type DevgateModule, type ModuleRegistry } from '@devgate/core';
import { QEMU_CONNECTOR_ID, QemuConnector, type QemuConnectorOptions } from './qemu-connector.js';

export const QEMU_MODULE_ID = 'backend-qemu';

/** The package's contributions, by kind, for `devgate plugins`-style listings. */
export const qemuContributions = {
  connectors: [QEMU_CONNECTOR_ID],
  drivers: [],
  sources: [],
  policyHooks: [],
} as const;

export interface QemuModule extends DevgateModule {
  /** The connector the module registers; apps use it for queries the Connector interface lacks. */
  readonly connector: QemuConnector;
}

export function qemuModule(options: QemuConnectorOptions = {}): QemuModule {
  const connector = new QemuConnector(options);
  return {
    id: QEMU_MODULE_ID,
    connector,
    register(registry: ModuleRegistry): Disposable {
      const registration = registry.registerConnector(connector);
      return Disposable.create(() => {
        registration.dispose();
        connector.dispose(); // idempotent: the kernel may dispose it too
      });
    },
  };
}
