import * as fs from 'node:fs';
import * as path from 'node:path';
import { type AttachSpec, type DeviceInfo, DriverContractError, Errors, portLabel } from '@devgate/core';
import { parseKeyValueLines } from './parse-udev-data.js';
import { isSafeRelativePath } from './recorded-device.js';
import { type HostRoots } from './sysfs-reader.js';

/**
 * The data path of the generic attach kinds (`qemu-device`, `libvirt-xml`) on this host. A spec that
 * asks for the device's node (`hostNode: 'char' | 'block'`) gets it as `path`: found from the
 * major:minor the device was listed with, through the kernel's own `sys/dev/<type>/MAJ:MIN/uevent`,
 * then checked by stat (a node of that type with that number). Nothing a driver or a device chose
 * goes into the path, and a `path` the driver set itself is dropped.
 */
export async function nodeDataPath(roots: HostRoots, device: DeviceInfo, spec: AttachSpec): Promise<AttachSpec> {
  const params = { ...spec.params };
  delete params.path;
  const type = params.hostNode;
  if (type === undefined) return { ...spec, params };
  if (type !== 'char' && type !== 'block') {
    throw new DriverContractError(device.port.devclass, `hostNode must be 'char' or 'block', not ${String(type)}`);
  }
  const label = portLabel(device.port);
  const listed = device.data['major-minor'];
  if (typeof listed !== 'string' || !/^\d{1,5}:\d{1,8}$/.test(listed)) {
    throw Errors.deviceChanged({ device: label, reason: 'it was listed without a major:minor' });
  }
  const uevent = parseKeyValueLines(
    await fs.promises.readFile(path.join(roots.sys, 'dev', type, listed, 'uevent'), 'utf8').catch(() => ''),
  );
  const devname = uevent.DEVNAME?.replace(/^\/dev\//, '');
  if (!devname || !isSafeRelativePath(devname)) {
    throw Errors.deviceChanged({ device: label, reason: `this host has no ${type} device ${listed} now` });
  }
  const node = path.join(roots.dev, devname);
  const stat = await fs.promises.stat(node, { bigint: true }).catch(() => undefined);
  const rightType = type === 'char' ? stat?.isCharacterDevice() : stat?.isBlockDevice();
  const actual = stat ? `${major(stat.rdev)}:${minor(stat.rdev)}` : undefined;
  if (!rightType || actual !== listed) {
    throw Errors.deviceChanged({ device: label, reason: `${node} is ${actual ?? 'missing'}, listed as ${listed}` });
  }
  return { ...spec, params: { ...params, path: node } };
}

// Linux's dev_t layout (glibc's gnu_dev_major/minor).
function major(dev: bigint): bigint {
  return ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
}

function minor(dev: bigint): bigint {
  return (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
}
