/**
 * Trees laid out like lsblk's `--sysroot` dumps (util-linux `tests/ts/lsblk/dumps/*.tar.xz`, and
 * what people copy from a machine for a bug report): a trimmed copy of /sys holding only
 * block-relevant files. Block devices are listed in `sys/block/<disk>` and `sys/dev/block/MAJ:MIN`
 * (links into sys/devices), and there is no sys/class, no `uevent` file and no `subsystem` link.
 *
 * The reader uses this when the tree has no `class/block`. What the kernel would have written is
 * derived, in memory, only from what the dump recorded (nothing is written to the tree):
 *  - every block device (the targets of sys/block/* and sys/dev/block/*, and the partition
 *    directories of those disks) is a `block` device: MAJOR, MINOR and DEVNAME from `dev` (or the
 *    sys/dev/block link name), DEVTYPE disk or partition, PARTN from `partition`;
 *  - ancestors whose kind the kernel's naming makes certain are devices too, so drivers can walk
 *    up to them: PCI functions (`0000:00:1f.2`, bus pci, PCI_SLOT_NAME), SCSI hosts, targets and
 *    devices (`host0`, `target0:0:0`, `0:0:0:0`, bus scsi, DEVTYPE scsi_host/scsi_target/
 *    scsi_device) and NVMe controllers (`nvme/nvme0`, class nvme). Other directories (`ata1`,
 *    `pci0000:00`) stay plain directories, not devices.
 * A directory that has a `uevent` file of its own is read as it is.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** What the kernel would have put in a device's `uevent` file and `subsystem` link. */
export interface DerivedDevice {
  readonly subsystem: string;
  readonly properties: Readonly<Record<string, string>>;
}

/** Whether a sysfs tree has the lsblk dump layout: block devices, but no class/block to list them. */
export function isTrimmedBlockTree(sys: string): boolean {
  return !isDirectory(path.join(sys, 'class', 'block'));
}

/**
 * The block devices of a trimmed tree, by resolved directory under `devices` (the resolved
 * `<sys>/devices`), each with what the kernel would report for it.
 */
export function trimmedBlockDevices(sys: string, devices: string): Map<string, DerivedDevice> {
  const found = new Map<string, string | undefined>(); // directory -> MAJ:MIN from a sys/dev/block name
  const add = (link: string, majMin?: string) => {
    const target = realpathOrUndefined(link);
    if (!target || !target.startsWith(devices + '/') || !isDirectory(target)) return;
    if (found.get(target) === undefined) found.set(target, majMin);
  };
  for (const name of readdir(path.join(sys, 'block'))) add(path.join(sys, 'block', name));
  for (const name of readdir(path.join(sys, 'dev', 'block'))) {
    add(path.join(sys, 'dev', 'block', name), /^\d+:\d+$/.test(name) ? name : undefined);
  }
  for (const disk of [...found.keys()]) {
    for (const name of readdir(disk)) {
      const child = path.join(disk, name);
      if (!found.has(child) && isFile(path.join(child, 'partition')) && !isSymlink(child)) found.set(child, undefined);
    }
  }
  const result = new Map<string, DerivedDevice>();
  for (const [dir, linkName] of found) {
    const [major, minor] = majorMinor(readText(path.join(dir, 'dev')) ?? linkName);
    const partn = readText(path.join(dir, 'partition'));
    const properties: Record<string, string> = {};
    if (major !== undefined) Object.assign(properties, { MAJOR: major, MINOR: minor });
    properties.DEVNAME = path.basename(dir);
    properties.DEVTYPE = partn !== undefined ? 'partition' : 'disk';
    if (partn !== undefined && /^\d+$/.test(partn)) properties.PARTN = partn;
    result.set(dir, { subsystem: 'block', properties });
  }
  return result;
}

/** An ancestor of a block device in a trimmed tree: a device if its name says what it is. */
export function trimmedAncestor(dir: string): DerivedDevice | undefined {
  const name = path.basename(dir);
  if (/^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(name)) {
    return { subsystem: 'pci', properties: { PCI_SLOT_NAME: name } };
  }
  if (/^host\d+$/.test(name)) return { subsystem: 'scsi', properties: { DEVTYPE: 'scsi_host' } };
  if (/^target\d+:\d+:\d+$/.test(name)) return { subsystem: 'scsi', properties: { DEVTYPE: 'scsi_target' } };
  if (/^\d+:\d+:\d+:\d+$/.test(name)) return { subsystem: 'scsi', properties: { DEVTYPE: 'scsi_device' } };
  if (/^nvme\d+$/.test(name) && path.basename(path.dirname(dir)) === 'nvme') {
    const [major, minor] = majorMinor(readText(path.join(dir, 'dev')));
    return {
      subsystem: 'nvme',
      properties: { ...(major !== undefined ? { MAJOR: major, MINOR: minor } : {}), DEVNAME: name },
    };
  }
  return undefined;
}

function majorMinor(dev: string | undefined): [string, string] | [] {
  return dev && /^\d+:\d+$/.test(dev) ? (dev.split(':') as [string, string]) : [];
}

/**
 * A small attribute file. A tree read in place (`--sysroot`) is anyone's: only a regular file is
 * read, so a FIFO cannot block the reader and a device node is never opened.
 */
function readText(file: string): string | undefined {
  try {
    if (!fs.statSync(file).isFile()) return undefined;
    // O_NONBLOCK: should it have been swapped for a FIFO since, the open does not wait for a writer.
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
    try {
      if (!fs.fstatSync(fd).isFile()) return undefined;
      const buffer = Buffer.alloc(4096);
      const n = fs.readSync(fd, buffer, 0, buffer.length, 0);
      return buffer.subarray(0, n).toString('utf8').trim();
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

function readdir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

function realpathOrUndefined(file: string): string | undefined {
  try {
    return fs.realpathSync(file);
  } catch {
    return undefined;
  }
}

function isDirectory(file: string): boolean {
  try {
    return fs.statSync(file).isDirectory();
  } catch {
    return false;
  }
}

function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function isSymlink(file: string): boolean {
  try {
    return fs.lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}
