import * as fs from 'node:fs';
import * as path from 'node:path';
import { type AttachSpec, type DeviceInfo, DriverContractError, Errors, portLabel } from '@devgate/core';
import { type HostRoots } from './sysfs-reader.js';

const EVENT_NODE = /^event\d{1,6}$/;

/**
 * An input device of this host reaches a VM as its event nodes (`/dev/input/eventN`, opened by QEMU's
 * input-linux). Each node is checked against what was listed, by its major:minor, as a block device's
 * node is: a name reused by another device after a replug is never handed over. The spec gets `evdev`,
 * the nodes, in the order of `events`.
 */
export async function inputDataPath(roots: HostRoots, device: DeviceInfo, spec: AttachSpec): Promise<AttachSpec> {
  const label = portLabel(device.port);
  const events = String(spec.params.events ?? '').split(',');
  const expected = String(spec.params.devices ?? '').split(',');
  if (events.length !== expected.length || !events.every((e) => EVENT_NODE.test(e))) {
    throw new DriverContractError(device.port.devclass, `input-linux spec for ${label} names no valid event nodes`);
  }
  const nodes: string[] = [];
  for (const [i, event] of events.entries()) {
    const node = path.join(roots.dev, 'input', event);
    const stat = await fs.promises.stat(node, { bigint: true }).catch(() => undefined);
    if (!stat?.isCharacterDevice()) {
      throw Errors.deviceChanged({ device: label, reason: `${node} is not a character device` });
    }
    const actual = `${major(stat.rdev)}:${minor(stat.rdev)}`;
    if (actual !== expected[i]) {
      throw Errors.deviceChanged({ device: label, reason: `${node} is ${actual}, listed as ${expected[i]}` });
    }
    nodes.push(node);
  }
  return { ...spec, params: { ...spec.params, evdev: nodes.join(',') } };
}

// Linux's dev_t layout (glibc's gnu_dev_major/minor).
function major(dev: bigint): bigint {
  return ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
}

function minor(dev: bigint): bigint {
  return (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
}
