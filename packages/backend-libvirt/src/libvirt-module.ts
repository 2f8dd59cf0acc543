/**
 * What @devgate/backend-libvirt contributes to a kernel: one Connector per libvirt URI (by libvirt's
 * convention `LIBVIRT_DEFAULT_URI`, else `qemu:///system`, plus any configured, such as
 * `qemu+ssh://host/system`). No device class driver, device source or policy hook. The domains of
 * every URI are frontends under their libvirt names; a name defined at two URIs goes to the first.
 */
import { Disposable, type DevgateModule, type ModuleRegistry } from '@devgate/core';
import { LIBVIRT_CONNECTOR_ID, LibvirtConnector, type LibvirtConnectorOptions } from './libvirt-connector.js';

export const LIBVIRT_MODULE_ID = 'backend-libvirt';

/** The package's contributions, by kind, for `devgate plugins`-style listings. */
export const libvirtContributions = {
  connectors: [LIBVIRT_CONNECTOR_ID],
  drivers: [],
  sources: [],
  policyHooks: [],
} as const;

export interface LibvirtModuleOptions extends Omit<LibvirtConnectorOptions, 'uri' | 'transport' | 'id'> {
  /** The URIs to connect to, in order of precedence. */
  readonly uris: readonly string[];
}

export interface LibvirtModule extends DevgateModule {
  /** One connector per URI, in the order given. */
  readonly connectors: readonly LibvirtConnector[];
  /**
   * Reads every URI's domains once (what `manages` and `domains` answer from). A URI that cannot be
   * reached now is reported in the result and keeps retrying in the background.
   */
  ready(): Promise<{ readonly uri: string; readonly error?: Error }[]>;
}

export function libvirtModule(options: LibvirtModuleOptions): LibvirtModule {
  const uris = [...new Set(options.uris)];
  const connectors = uris.map((uri) => new LibvirtConnector({ ...options, uri }));
  return {
    id: LIBVIRT_MODULE_ID,
    connectors,
    ready: () =>
      Promise.all(
        connectors.map((c) =>
          c.ready().then(
            () => ({ uri: c.uri }),
            (error: Error) => ({ uri: c.uri, error }),
          ),
        ),
      ),
    register(registry: ModuleRegistry): Disposable {
      const registrations = connectors.map((c) => registry.registerConnector(c));
      return Disposable.create(() => {
        for (const r of registrations) r.dispose();
        for (const c of connectors) c.dispose(); // idempotent: the kernel may dispose them too
      });
    },
  };
}
