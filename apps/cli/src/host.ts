import { type DeviceManager, type DeviceSource, Errors, Kernel } from '@devgate/core';
import { LocalHostSource, RecordedHostSource, rootsUnder } from '@devgate/host';
import { blockModule } from '@devgate/driver-block';

/** Where the devices come from: this host, a tree laid out like `/`, or a recording. */
export interface HostOptions {
  readonly sysroot?: string;
  readonly recording?: string;
  readonly backend?: string;
}

export interface OpenHost {
  readonly manager: DeviceManager;
  readonly backends: readonly string[];
  close(): void;
}

/** Every class driver the CLI knows; the module files list what each package contributes. */
const MODULES = [blockModule];

/** Runs the kernel in-process for one command: no daemon, no hotplug, one snapshot. */
export async function openHost(options: HostOptions): Promise<OpenHost> {
  if (options.sysroot && options.recording) {
    throw Errors.badOption({ option: '--recording', reason: 'not allowed with argument --sysroot' });
  }
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
  const kernel = new Kernel().load(...MODULES);
  kernel.registerSource(source);
  const manager = kernel.start();
  await local?.whenProbed();
  // In-process there is nobody to retry for: a driver that failed fails the command.
  const fault = manager.faults()[0];
  if (fault) {
    kernel.dispose();
    throw fault.error;
  }
  return { manager, backends: [backend], close: () => kernel.dispose() };
}
