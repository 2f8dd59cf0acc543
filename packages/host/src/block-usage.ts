/**
 * Whether this host uses a block device now, read at the moment it is handed over. A listing can be
 * older than a mount: mounting makes no uevent, and a device-mapper or RAID device built on a
 * partition makes none for the partition. A VM given a disk the host has mounted corrupts it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inUseBy } from '@devgate/core';
import { dmHeldOpenNow } from './dm-open.js';
import { type HostRoots, readUsage } from './sysfs-reader.js';

/**
 * Why the host uses the block device `name` or a partition of it (mounted, swap, held by another
 * block device, a dm device some program holds open), or undefined when it does not.
 */
export function blockInUseNow(roots: HostRoots, name: string): string | undefined {
  const dir = path.join(roots.sys, 'class', 'block', name);
  if (!/^[A-Za-z0-9._-]+$/.test(name) || !fs.existsSync(dir)) return undefined;
  const usage = readUsage(roots);
  const partitions = entriesOf(dir).filter(
    (entry) => entry.startsWith(name) && fs.existsSync(path.join(dir, entry, 'partition')),
  );
  for (const [part, partDir] of [[name, dir], ...partitions.map((p) => [p, path.join(dir, p)])]) {
    const reason = partUse(roots, usage, part, partDir);
    if (reason) return part === name ? reason : `partition ${part} is ${reason}`;
  }
  return undefined;
}

function partUse(roots: HostRoots, usage: ReturnType<typeof readUsage>, name: string, dir: string): string | undefined {
  const majmin = readTrimmed(path.join(dir, 'dev'));
  if (majmin && usage.mounted.has(majmin)) return 'mounted';
  if (usage.swaps.has(`/dev/${name}`)) return 'swap';
  const holders = entriesOf(path.join(dir, 'holders'));
  if (holders.length > 0) return inUseBy(holders);
  return majmin && /^dm-\d+$/.test(name) && dmHeldOpenNow(roots, majmin) ? 'open' : undefined;
}

function entriesOf(dir: string): string[] {
  try {
    return fs.readdirSync(dir).sort();
  } catch {
    return [];
  }
}

function readTrimmed(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
}
