/**
 * Qubes' flag file: a loop device whose backing file lies in a directory holding
 * `.qubes-exclude-block-devices`, or anywhere below one, is not offered (the images of VMs, set up
 * as loop devices by whatever runs them). Looked for on this host's own filesystem, so only for the
 * running kernel's loop devices, and once per device record (as Qubes' rules look when udev does).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type HostTree, type RawDeviceRecord, sysname } from '@devgate/core';
import { type HostRoots, LOCAL_ROOTS } from './sysfs-reader.js';

export const EXCLUDE_FLAG_FILE = '.qubes-exclude-block-devices';

const decided = new WeakMap<RawDeviceRecord, boolean>();

/** `major:minor` of the loop devices whose backing file a flag file excludes; undefined for none. */
export function excludedLoopsOf(tree: HostTree, roots: HostRoots): Set<string> | undefined {
  if (roots.sys !== LOCAL_ROOTS.sys) return undefined;
  let excluded: Set<string> | undefined;
  const flagged = new Map<string, boolean>(); // per directory, for this tree
  for (const record of tree.devices('block')) {
    if (!/^loop\d+$/.test(sysname(record.devpath)) || record.attribute('size') === '0') continue;
    let known = decided.get(record);
    if (known === undefined) {
      known = underFlag(record.attribute('loop/backing_file'), flagged);
      decided.set(record, known);
    }
    const { MAJOR, MINOR } = record.properties;
    if (known && MAJOR !== undefined && MINOR !== undefined) (excluded ??= new Set()).add(`${MAJOR}:${MINOR}`);
  }
  return excluded;
}

/** Whether a directory from the file's up to `/` holds the flag file. */
function underFlag(file: string | undefined, flagged: Map<string, boolean>): boolean {
  if (!file?.startsWith('/')) return false;
  // The kernel says " (deleted)" after the name of a file that is gone: its directory still counts.
  for (let dir = path.dirname(file.replace(/ \(deleted\)$/, '')); ; dir = path.dirname(dir)) {
    let found = flagged.get(dir);
    if (found === undefined) {
      found = fs.existsSync(path.join(dir, EXCLUDE_FLAG_FILE));
      flagged.set(dir, found);
    }
    if (found) return true;
    if (dir === '/') return false;
  }
}
