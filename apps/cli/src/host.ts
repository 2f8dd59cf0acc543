import {
  type DeviceManager,
  type DeviceSource,
  Errors,
  errorCode,
  Kernel,
  type ModuleReference,
  type PolicyHook,
} from '@devgate/core';
import {
  builtinModules,
  loadConfiguredModules,
  provideServices,
  readTrustedRegistry,
  registryBackends,
} from '@devgate/service';
import { LocalHostSource, RecordedHostSource, rootsUnder } from '@devgate/host';
import { type DomainRegistryData, defaultRegistryFile } from '@devgate/backend-qemu';
import { AgentSource } from '@devgate/backend-agent';
import { defaultLibvirtUri, missingLocalSocket } from '@devgate/backend-libvirt';
import { withCliLock } from './cli-lock.js';

/** Where the devices come from: this host, a tree laid out like `/`, or a recording. */
export interface HostOptions {
  readonly sysroot?: string;
  readonly recording?: string;
  readonly backend?: string;
  /** The domain registry (default: $DEVGATE_DOMAINS, else the user's state directory). */
  readonly domains?: string;
  /** Policy the kernel applies to every attach (the deny lists devgated keeps). */
  readonly policyHooks?: readonly PolicyHook[];
  /** libvirt URIs whose domains are frontends; default libvirt's own (LIBVIRT_DEFAULT_URI, else qemu:///system). */
  readonly libvirtUris?: readonly string[];
  /** Driver packages to load besides the built-in ones (devgated's configured `modules`). */
  readonly modules?: readonly ModuleReference[];
  /** The command changes nothing (a listing): it takes turns only with a lock file that is there, and creates none. */
  readonly readOnly?: boolean;
}

export interface OpenHost {
  readonly manager: DeviceManager;
  /** What it was composed of: `devgate drivers` reads the modules from it. */
  readonly kernel: Kernel;
  readonly backends: readonly string[];
  close(): void;
}

/**
 * Runs the kernel in-process for one command: no daemon, no hotplug, one snapshot of the host,
 * and the attachments read back from every running VM. `readRegistry` gives the domain registry
 * (read now unless `withHost` has a read to hand over).
 */
export async function openHost(
  options: HostOptions,
  readRegistry: () => DomainRegistryData = () => readTrustedRegistry(registryFileOf(options)),
): Promise<OpenHost> {
  if (options.sysroot && options.recording) {
    throw Errors.badOption({ option: '--recording', reason: 'not allowed with argument --sysroot' });
  }
  // Read as devgated reads it, before anything is opened: a registry another user could write is
  // refused (DG_CONFIG_INVALID), so a root command talks to no QMP socket or agent it names.
  const registry = readRegistry();
  const backend = options.backend ?? 'dom0';
  let source: DeviceSource;
  let local: LocalHostSource | undefined;
  if (options.recording) {
    source = new RecordedHostSource(options.recording, backend);
  } else {
    local = new LocalHostSource({
      backend,
      hotplug: 'static',
      roots: options.sysroot ? rootsUnder(options.sysroot) : undefined,
    });
    source = local;
  }
  // devgated's built-in modules. One-shot: libvirt's domains are read once, no event stream; a
  // detach is confirmed by reading back.
  const { modules, libvirt } = builtinModules({
    domains: options.domains,
    // Every re-read by the QEMU connector is checked too: a refusal keeps what it read before.
    registryReader: readTrustedRegistry,
    libvirt: { uris: options.libvirtUris ?? [defaultLibvirtUri()], dom0: backend, watch: false },
  });
  const kernel = new Kernel().load(...modules);
  kernel.registerSource(source);
  // Driver packages, as devgated loads them: isolated, with what devgate provides them.
  provideServices(kernel, { roots: options.sysroot ? rootsUnder(options.sysroot) : undefined });
  loadConfiguredModules(kernel, options.modules ?? []);
  for (const hook of options.policyHooks ?? []) kernel.registerPolicyHook(hook);
  // The registry's backend domains: recordings (`devgate lab up sys-usb --recording FILE`), and
  // backend VMs read through their devgate-agent (`devgate usbvm create`).
  const others = registryBackends(registry, (name) => name === backend).map((b) => b.create());
  for (const other of others) kernel.registerSource(other);
  const agents = others.filter((s): s is AgentSource => s instanceof AgentSource);
  const manager = kernel.start();
  try {
    await local?.whenProbed();
    // An agent that does not answer (its VM is down, or devgated holds its channel) lists nothing.
    const answered = await Promise.all(agents.map((agent) => agent.whenReady(5_000)));
    // In-process there is nobody to retry for: a built-in driver that failed fails the command (a
    // driver package's fault is its own: `devgate drivers` shows it, the other classes work).
    const builtIn = new Set(kernel.modules().flatMap((m) => (m.origin.kind === 'built-in' ? m.drivers : [])));
    const fault = manager.faults().find((f) => builtIn.has(f.driverId));
    if (fault) throw fault.error;
    await libvirt.ready();
    // What is not listed is gone only from the host read live and from agents that answered: a
    // recording or a --sysroot tree is another machine's devices, and a silent agent listed nothing.
    const complete = new Set(agents.filter((_, i) => answered[i]).map((agent) => agent.backend));
    if (local && !options.sysroot) complete.add(backend);
    await manager.syncAttachments({ complete: (name) => complete.has(name) });
  } catch (error) {
    kernel.dispose();
    throw error;
  }
  return { manager, kernel, backends: manager.sources.map((s) => s.backend), close: () => kernel.dispose() };
}

/**
 * Opens the host, runs `work`, and always closes it. Commands take turns through the CLI lock when
 * there is someone to take turns with (ADR 0006): a domain or backend in the registry, or a libvirt
 * that listens. With none, a command talks to no hypervisor and no backend VM (an attach has no VM
 * to go to), so it runs without the lock and without spawning flock(1) for it (ADR 0014).
 */
export async function withHost<T>(options: HostOptions, work: (host: OpenHost) => Promise<T> | T): Promise<T> {
  const run = async (readRegistry?: () => DomainRegistryData) => {
    const host = await openHost(options, readRegistry);
    try {
      return await work(host);
    } finally {
      host.close();
    }
  };
  // Without peers, the read that said so is the one opened (nothing to take turns with, no second
  // read). With them, the registry is read again under the lock: a command that held it may have
  // just added the VM this one is about to use (`devgate lab up`).
  const firstRead = readRegistryOnce(registryFileOf(options));
  if (!hasPeers(options, firstRead)) return run(firstRead);
  return withCliLock(`${registryFileOf(options)}.lock`, () => run(), undefined, {
    readOnly: options.readOnly,
  });
}

/** Whether the command may talk to a hypervisor or a backend VM: registered domains, or a reachable libvirt. */
function hasPeers(options: HostOptions, readRegistry: () => DomainRegistryData): boolean {
  try {
    const registry = readRegistry();
    if (Object.keys(registry.domains).length > 0 || Object.keys(registry.backends ?? {}).length > 0) return true;
  } catch (error) {
    // Refused (others may write it, or it is no file devgate can read): said at once, before a
    // lock file is made beside it, in a directory others may write.
    if (errorCode(error) === Errors.configInvalid.code) throw error;
    return true; // a broken registry: openHost says why, under the lock as before
  }
  return (options.libvirtUris ?? [defaultLibvirtUri()]).some((uri) => missingLocalSocket(uri) === undefined);
}

/** The registry read now: what it held, or its error thrown again, each time it is asked for. */
function readRegistryOnce(file: string): () => DomainRegistryData {
  try {
    const registry = readTrustedRegistry(file);
    return () => registry;
  } catch (error) {
    return () => {
      throw error;
    };
  }
}

/** The registry the command reads: `--domains`, `$DEVGATE_DOMAINS` or devgated's, else the default. */
function registryFileOf(options: HostOptions): string {
  return options.domains ?? defaultRegistryFile();
}
