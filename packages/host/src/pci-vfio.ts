/**
 * The host side of handing a PCI function to a VM: binding its IOMMU group to vfio-pci, and giving it
 * back to the host's drivers when the user asks. The order of operations is libvirt's
 * (`src/util/virpci.c`) and the kernel's ABI (`Documentation/ABI/testing/sysfs-bus-pci`):
 *
 *   to vfio-pci:  write `vfio-pci` to  devices/BDF/driver_override
 *                 write BDF to         devices/BDF/driver/unbind      (when a driver holds it)
 *                 write BDF to         bus/pci/drivers_probe
 *   back:         write `\n` to        devices/BDF/driver_override
 *                 write BDF to         devices/BDF/driver/unbind      (vfio-pci)
 *                 write BDF to         bus/pci/drivers_probe
 *
 * driver_override names one device; `new_id` would take every device with the same vendor:device,
 * so it is never used. The IOMMU group is the unit of ownership (`Documentation/driver-api/vfio.rst`):
 * every endpoint in it goes to vfio-pci, bridges stay with pcieport. Everything is checked before the
 * first write (the device is the one listed, the host has an IOMMU, vfio-pci exists), and a group that
 * cannot be bound whole is given back to the drivers it had.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Errors } from '@devgate/core';
import { type HostRoots } from './sysfs-reader.js';

const SBDF = /^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/;
const VFIO = 'vfio-pci';

/** How sysfs files are written; tests put a model of the kernel here. */
export type SysfsWrite = (file: string, text: string) => Promise<void>;

export interface VfioOptions {
  readonly write?: SysfsWrite;
  /** How long the kernel has to bind a device after drivers_probe. Default 3 s. */
  readonly bindTimeoutMs?: number;
  /** `modprobe vfio-pci` when the driver is not there yet (default: only on the real /sys). */
  readonly loadModule?: boolean;
}

export interface GroupMember {
  readonly sbdf: string;
  /** The driver before devgate changed anything (none: no driver was bound). */
  readonly driver?: string;
  /** What happened to it: bound to vfio-pci, already there, or left alone (a bridge). */
  readonly action: 'bound' | 'already' | 'bridge';
}

export interface VfioBinding {
  readonly group: string;
  readonly members: readonly GroupMember[];
}

export interface Released {
  readonly sbdf: string;
  /** The driver that took it back (none: no host driver wanted it). */
  readonly driver?: string;
}

/**
 * Binds the IOMMU group of `sbdf` to vfio-pci. `expected` is what was listed (vendor and device id,
 * 4 lowercase hex digits each): another device at that address is refused before anything changes.
 */
export async function bindGroupToVfio(
  roots: HostRoots,
  sbdf: string,
  expected: { readonly vendorId: string; readonly deviceId: string; readonly label: string },
  options: VfioOptions = {},
): Promise<VfioBinding> {
  const write = options.write ?? writeSysfs;
  const label = expected.label;
  const device = deviceDir(roots, sbdf);
  if (!device || !fs.existsSync(device))
    throw Errors.deviceChanged({ device: label, reason: `no PCI device ${sbdf} now` });
  const ids = `${readId(device, 'vendor')}:${readId(device, 'device')}`;
  if (ids !== `${expected.vendorId}:${expected.deviceId}`) {
    throw Errors.deviceChanged({
      device: label,
      reason: `${sbdf} is ${ids} now, listed as ${expected.vendorId}:${expected.deviceId}`,
    });
  }
  const group = iommuGroupOf(roots, sbdf);
  const members = groupMembers(roots, group, sbdf);
  await ensureVfioDriver(roots, options.loadModule ?? roots.sys === '/sys');

  const done: GroupMember[] = [];
  try {
    for (const member of members) {
      const dir = deviceDir(roots, member)!;
      const driver = driverOf(dir);
      if (isBridgeDir(dir)) {
        done.push({ sbdf: member, ...(driver ? { driver } : {}), action: 'bridge' });
        continue;
      }
      if (driver === VFIO) {
        done.push({ sbdf: member, driver, action: 'already' });
        continue;
      }
      await write(path.join(dir, 'driver_override'), VFIO);
      done.push({ sbdf: member, ...(driver ? { driver } : {}), action: 'bound' });
      if (driver) await write(path.join(dir, 'driver', 'unbind'), member);
      await write(path.join(roots.sys, 'bus', 'pci', 'drivers_probe'), member);
      const now = await settle(dir, (d) => d === VFIO, options.bindTimeoutMs ?? 3_000);
      if (now !== VFIO) {
        throw Errors.pciBindFailed({
          device: member,
          driver: VFIO,
          reason: `after drivers_probe its driver is ${now ?? 'none'}`,
        });
      }
    }
  } catch (error) {
    // Leave the host as it was: what devgate moved goes back to the driver it had.
    for (const member of done.filter((m) => m.action === 'bound').reverse()) {
      await release(roots, member.sbdf, write, options.bindTimeoutMs ?? 3_000).catch(() => undefined);
    }
    if (error instanceof Error && 'code' in error) throw error;
    throw Errors.pciBindFailed({ device: sbdf, driver: VFIO, reason: (error as Error).message });
  }
  return { group, members: done };
}

/**
 * Gives the group of `sbdf` back to the host: every member vfio-pci holds goes back to whatever
 * driver the kernel picks for it (driver_override cleared). Refused when `sbdf` is not on vfio-pci.
 * The caller makes sure no VM holds the device (unbinding vfio-pci waits for the VM to let go).
 */
export async function releaseGroupFromVfio(
  roots: HostRoots,
  sbdf: string,
  label: string,
  options: VfioOptions = {},
): Promise<Released[]> {
  const write = options.write ?? writeSysfs;
  const device = deviceDir(roots, sbdf);
  if (!device || !fs.existsSync(device))
    throw Errors.deviceChanged({ device: label, reason: `no PCI device ${sbdf} now` });
  const driver = driverOf(device);
  if (driver !== VFIO && readOverride(device) !== VFIO)
    throw Errors.pciNotOnVfio({ device: label, driver: driver ?? 'none' });
  let members = [sbdf];
  try {
    members = groupMembers(roots, iommuGroupOf(roots, sbdf), sbdf);
  } catch {
    // No group any more (cannot happen while vfio-pci holds it): the device alone.
  }
  const released: Released[] = [];
  for (const member of members) {
    const dir = deviceDir(roots, member)!;
    if (driverOf(dir) !== VFIO && readOverride(dir) !== VFIO) continue;
    const now = await release(roots, member, write, options.bindTimeoutMs ?? 3_000);
    released.push({ sbdf: member, ...(now ? { driver: now } : {}) });
  }
  return released;
}

async function release(
  roots: HostRoots,
  sbdf: string,
  write: SysfsWrite,
  timeoutMs: number,
): Promise<string | undefined> {
  const dir = deviceDir(roots, sbdf)!;
  await write(path.join(dir, 'driver_override'), '\n');
  if (driverOf(dir)) await write(path.join(dir, 'driver', 'unbind'), sbdf);
  await write(path.join(roots.sys, 'bus', 'pci', 'drivers_probe'), sbdf);
  // A host driver may take a moment to probe; none at all is a valid outcome.
  return settle(dir, (d) => d !== undefined, timeoutMs);
}

/** The group's number; DG_NO_IOMMU when the host has no IOMMU or the device is in no group. */
export function iommuGroupOf(roots: HostRoots, sbdf: string): string {
  const groups = path.join(roots.sys, 'kernel', 'iommu_groups');
  const any = fs.existsSync(groups) ? fs.readdirSync(groups) : [];
  if (any.length === 0) {
    throw Errors.noIommu({
      device: sbdf,
      reason: `this host has no IOMMU (${groups} is ${fs.existsSync(groups) ? 'empty' : 'absent'})`,
    });
  }
  const target = readlink(path.join(deviceDir(roots, sbdf)!, 'iommu_group'));
  const group = target ? path.basename(target) : undefined;
  if (!group || !/^\d{1,6}$/.test(group)) throw Errors.noIommu({ device: sbdf, reason: 'it is in no IOMMU group' });
  return group;
}

function groupMembers(roots: HostRoots, group: string, sbdf: string): string[] {
  const dir = path.join(roots.sys, 'kernel', 'iommu_groups', group, 'devices');
  const members = (fs.existsSync(dir) ? fs.readdirSync(dir) : [sbdf]).filter(
    (m) => SBDF.test(m) && deviceDir(roots, m),
  );
  return [...new Set([...members, sbdf])].sort();
}

async function ensureVfioDriver(roots: HostRoots, load: boolean): Promise<void> {
  const dir = path.join(roots.sys, 'bus', 'pci', 'drivers', VFIO);
  // The IOMMU backend of VFIO containers: without it QEMU's vfio-pci finds "No available IOMMU
  // models". Nothing loads it on its own (vfio-pci does not depend on it).
  const type1 = path.join(roots.sys, 'module', 'vfio_iommu_type1');
  if (load && !fs.existsSync(type1)) await modprobe('vfio_iommu_type1');
  if (fs.existsSync(dir)) return;
  if (load) {
    const error = await modprobe(VFIO);
    if (fs.existsSync(dir)) return;
    throw Errors.vfioUnavailable({
      reason: `modprobe ${VFIO} failed: ${error?.message.trim() ?? 'no driver appeared'}`,
    });
  }
  throw Errors.vfioUnavailable({ reason: `${dir} does not exist` });
}

function modprobe(module: string): Promise<Error | null> {
  return new Promise((resolve) => execFile('modprobe', [module], (error) => resolve(error)));
}

/** Waits for the kernel to (re)bind: driver binding after drivers_probe is synchronous, udev is not involved. */
async function settle(
  dir: string,
  done: (driver: string | undefined) => boolean,
  timeoutMs: number,
): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const driver = driverOf(dir);
    if (done(driver) || Date.now() >= deadline) return driver;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function deviceDir(roots: HostRoots, sbdf: string): string | undefined {
  return SBDF.test(sbdf) ? path.join(roots.sys, 'bus', 'pci', 'devices', sbdf) : undefined;
}

function driverOf(dir: string): string | undefined {
  const target = readlink(path.join(dir, 'driver'));
  return target ? path.basename(target) : undefined;
}

function readOverride(dir: string): string | undefined {
  const text = readSmall(path.join(dir, 'driver_override'))?.trim();
  return text && text !== '(null)' ? text : undefined;
}

function isBridgeDir(dir: string): boolean {
  return /^0x06/.test(readSmall(path.join(dir, 'class'))?.trim() ?? '');
}

function readId(dir: string, name: string): string {
  return (readSmall(path.join(dir, name)) ?? '').trim().toLowerCase().replace(/^0x/, '');
}

function readSmall(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').slice(0, 256);
  } catch {
    return undefined;
  }
}

function readlink(file: string): string | undefined {
  try {
    return fs.readlinkSync(file);
  } catch {
    return undefined;
  }
}

/** A sysfs attribute takes one write(2) of the whole value. */
async function writeSysfs(file: string, text: string): Promise<void> {
  const handle = await fs.promises.open(file, 'w');
  try {
    await handle.write(text);
  } finally {
    await handle.close();
  }
}
