import * as fs from 'node:fs';
import * as path from 'node:path';
import { type AttachSpec, type DeviceInfo, Errors, LIBVIRT_XML_KIND, QEMU_DEVICE_KIND, portLabel } from '@devgate/core';
import { blockInUseNow } from './block-usage.js';
import { nodeDataPath } from './node-data-path.js';
import { parseKeyValueLines } from './parse-udev-data.js';
import { bindGroupToVfio } from './pci-vfio.js';
import { type HostRoots } from './sysfs-reader.js';
import { inputDataPath } from './input-data-path.js';

/**
 * How a device of this host reaches a VM: the host's own node for a block device, the host's USB
 * bus and port for a USB device, the PCI function bound to vfio-pci with its IOMMU group. Each is
 * checked against what was listed (the node's major:minor, the USB device's vendor and product, the
 * PCI function's vendor and device), so a name reused by another device is never handed over; and a
 * block device this host uses now (mounted since it was listed, say) is refused.
 */
export async function hostDataPath(roots: HostRoots, device: DeviceInfo, spec: AttachSpec): Promise<AttachSpec> {
  const label = portLabel(device.port);
  // The generic kinds: the device's node, by major:minor, when the spec asks for it.
  if (spec.kind === QEMU_DEVICE_KIND || spec.kind === LIBVIRT_XML_KIND) return nodeDataPath(roots, device, spec);
  switch (spec.kind) {
    case 'block': {
      const node = path.join(roots.dev, path.basename(device.port.portId));
      const expected = device.data['major-minor'];
      const stat = await fs.promises.stat(node, { bigint: true }).catch(() => undefined);
      if (!stat?.isBlockDevice())
        throw Errors.deviceChanged({ device: label, reason: `${node} is not a block device` });
      const actual = `${major(stat.rdev)}:${minor(stat.rdev)}`;
      if (actual !== expected) {
        throw Errors.deviceChanged({ device: label, reason: `${node} is ${actual}, listed as ${String(expected)}` });
      }
      const inUse = blockInUseNow(roots, path.basename(device.port.portId));
      if (inUse) throw Errors.deviceInUse({ device: label, reason: inUse });
      return { ...spec, params: { ...spec.params, path: node } };
    }
    case 'usb-host': {
      // The kernel's own uevent file says what the device at that path is: PRODUCT=vid/pid/bcd, BUSNUM.
      const file = path.join(roots.sys, 'bus', 'usb', 'devices', path.basename(device.port.portId), 'uevent');
      const uevent = parseKeyValueLines(await fs.promises.readFile(file, 'utf8').catch(() => ''));
      const [vendor, product] = (uevent.PRODUCT ?? '').split('/').map((hex) => hex.padStart(4, '0'));
      const ids = `${vendor}:${product}`.toLowerCase();
      if (!device.deviceId.toLowerCase().startsWith(`${ids}:`) && device.deviceId.toLowerCase() !== ids) {
        throw Errors.deviceChanged({ device: label, reason: `the device there now is ${uevent.PRODUCT ?? 'none'}` });
      }
      if (spec.params.hostbus !== undefined && Number(uevent.BUSNUM) !== spec.params.hostbus) {
        throw Errors.deviceChanged({
          device: label,
          reason: `it is on bus ${uevent.BUSNUM}, not ${spec.params.hostbus}`,
        });
      }
      return spec;
    }
    case 'vfio-pci': {
      // The whole IOMMU group goes to vfio-pci, after checking the function is the one listed and
      // the host has an IOMMU (DG_NO_IOMMU before anything is unbound); see pci-vfio.ts.
      const binding = await bindGroupToVfio(roots, String(spec.params.host), {
        vendorId: String(spec.params.vendorId),
        deviceId: String(spec.params.deviceId),
        label,
      });
      return {
        ...spec,
        params: {
          ...spec.params,
          group: binding.group,
          groupDevices: binding.members.map((m) => m.sbdf).join(','),
        },
      };
    }
    case 'input-linux':
      return inputDataPath(roots, device, spec);
    default:
      throw Errors.unsupported({ driverId: 'host', operation: `a data path for '${spec.kind}'` });
  }
}

// Linux's dev_t layout (glibc's gnu_dev_major/minor).
function major(dev: bigint): bigint {
  return ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
}

function minor(dev: bigint): bigint {
  return (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
}
