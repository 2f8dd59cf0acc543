/**
 * The modules devgate is built with, listed once: devgated and the CLI without it load the same
 * ones. The class drivers (block, usb, input, pci), the frontends' hypervisors (QEMU through its
 * QMP sockets, libvirt), and the backend domains the domain registry names (recorded hosts, and
 * backend VMs read through their devgate-agent).
 */
import { type DevgateModule, type DeviceSource } from '@devgate/core';
import { RecordedHostSource } from '@devgate/host';
import { blockModule } from '@devgate/driver-block';
import { usbModule } from '@devgate/driver-usb';
import { inputModule } from '@devgate/driver-input';
import { pciModule } from '@devgate/driver-pci';
import { type DomainRegistryData, qemuModule } from '@devgate/backend-qemu';
import { AgentSource } from '@devgate/backend-agent';
import { type LibvirtModule, type LibvirtModuleOptions, libvirtModule } from '@devgate/backend-libvirt';

export interface BuiltinModulesOptions {
  /** The domain registry (default: $DEVGATE_DOMAINS, else the user's state directory). */
  readonly domains?: string;
  /** How the QEMU connector reads it: devgated and the CLI give `readTrustedRegistry`; default, unchecked. */
  readonly registryReader?: (file: string) => DomainRegistryData;
  /** Which libvirt URIs, and how (devgated watches them; the CLI reads them once). */
  readonly libvirt: LibvirtModuleOptions;
}

export interface BuiltinModules {
  /** In load order: the class drivers, then the hypervisors. */
  readonly modules: readonly DevgateModule[];
  /** Its domains are read once before attachments are read back: the caller awaits `ready()`. */
  readonly libvirt: LibvirtModule;
}

export function builtinModules(options: BuiltinModulesOptions): BuiltinModules {
  const libvirt = libvirtModule(options.libvirt);
  return {
    modules: [
      blockModule,
      usbModule,
      inputModule,
      pciModule,
      qemuModule({ registryFile: options.domains, registryReader: options.registryReader }),
      libvirt,
    ],
    libvirt,
  };
}

/** A backend domain the registry names, and how to read it. */
export interface RegistryBackend {
  readonly backend: string;
  /** What its source reads (a recording; an agent's control and export sockets): another key, another source. */
  readonly key: string;
  create(): DeviceSource;
}

/**
 * The backend domains the registry names, except those `taken` (configured otherwise): hosts
 * replayed from recordings (`devgate lab up NAME --recording FILE`) and backend VMs read through
 * their devgate-agent (`devgate usbvm create`, ADR 0008), under the registry's names. `registry`: as
 * the caller read it, through `readTrustedRegistry` (devgated and the CLI alike).
 */
export function registryBackends(registry: DomainRegistryData, taken: (backend: string) => boolean): RegistryBackend[] {
  const backends: RegistryBackend[] = [];
  for (const [backend, { recording }] of Object.entries(registry.backends ?? {})) {
    if (taken(backend)) continue;
    backends.push({ backend, key: `recording ${recording}`, create: () => new RecordedHostSource(recording, backend) });
  }
  for (const [backend, { agent }] of Object.entries(registry.domains)) {
    if (!agent || taken(backend)) continue;
    backends.push({
      backend,
      key: `agent ${JSON.stringify(agent)}`,
      create: () => new AgentSource({ backend, control: agent.control, exportPorts: agent.exports }),
    });
  }
  return backends;
}
