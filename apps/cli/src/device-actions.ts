import { type DeviceClassId, Errors, type Port, parseDeviceArgument, portLabel } from '@devgate/core';
import { type HostOptions, withHost } from './host.js';

export interface AttachFlags {
  readonly option?: readonly string[];
  readonly ro?: boolean;
}

/** `-o name=value` pairs and `--ro`, normalized as Qubes' client does. */
export function attachOptions(flags: AttachFlags): Record<string, string> {
  const options: Record<string, string> = {};
  for (const pair of flags.option ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw Errors.badOption({ option: '--option', reason: `expected name=value, got '${pair}'` });
    let [name, value] = [pair.slice(0, eq), pair.slice(eq + 1)];
    if (name === 'ro') {
      name = 'read-only';
      const bool = value.toLowerCase();
      if (['true', '1', 'yes'].includes(bool)) value = 'yes';
      else if (['false', '0', 'no'].includes(bool)) value = 'no';
      else throw Errors.unsupportedOption({ option: 'ro', message: `Unknown \`read-only\` option value: ${value}` });
    }
    options[name] = value;
  }
  if (flags.ro) options['read-only'] = 'yes';
  return options;
}

function toPort(devclass: DeviceClassId, arg: string): { port: Port; deviceId?: string } {
  const { backend, portId, deviceId } = parseDeviceArgument(arg);
  return { port: { devclass, backend, portId }, deviceId };
}

export async function attachDevice(
  devclass: DeviceClassId,
  frontend: string,
  device: string,
  flags: AttachFlags,
  host: HostOptions,
): Promise<void> {
  const { port, deviceId } = toPort(devclass, device);
  const options = attachOptions(flags);
  await withHost(host, (opened) =>
    opened.manager.attach({ frontend, port, deviceId, options, requestedBy: requester() }),
  );
}

/**
 * Detaches one device from a frontend, or every device of the class from it. Either argument may be
 * left out (the seed's `qvm-block -d DEVICE`): a device alone is detached from whoever holds it.
 */
export async function detachDevice(
  devclass: DeviceClassId,
  frontend: string | undefined,
  device: string | undefined,
  host: HostOptions,
): Promise<void> {
  const port = device === undefined ? undefined : toPort(devclass, device).port;
  await withHost(host, async (opened) => {
    let vm = frontend;
    if (vm === undefined) {
      const attachment = port && opened.manager.get(port)?.attachment;
      if (!attachment) throw Errors.notAttached({ device: port ? portLabel(port) : '(none)' });
      vm = attachment.frontend;
    }
    if (!opened.manager.domains().includes(vm)) throw Errors.noConnector({ domain: vm });
    await opened.manager.detach(vm, port?.portId === '*' ? undefined : port, devclass);
  });
}

function requester(): string {
  return `uid ${process.getuid?.() ?? '?'} (cli)`;
}
