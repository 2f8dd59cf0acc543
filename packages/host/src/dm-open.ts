/**
 * Device-mapper devices some program holds open. Qubes hides an open dm device (an LVM volume a VM
 * runs from, a mapping another tool uses), and so do we; sysfs has no open count, so it is asked of
 * the running kernel through `dmsetup` (a fork, synchronous), only where there is a dm device to ask
 * about: a host without one forks nothing. A hotplug pass reuses an answer a quarter of a second old
 * (LocalHostSource); the hand-over asks afresh.
 */
import { spawnSync } from 'node:child_process';
import { type HostTree, sysname } from '@devgate/core';
import { type HostRoots, LOCAL_ROOTS } from './sysfs-reader.js';

/** `dmsetup info` of every mapping: major, minor and open count, one line each. */
const DMSETUP_ARGS = ['info', '-c', '--noheadings', '--separator', ' ', '-o', 'major,minor,open'];
const LINE = /^(\d{1,5}) (\d{1,8}) (\d{1,10})$/;
/** Far above any real host's mappings (a line is under 30 bytes). */
const MAX_OUTPUT_BYTES = 4 * 1024 * 1024;

/** What `dmsetup info` printed, or undefined when it could not be asked. */
export type DmsetupRun = () => string | undefined;

function runDmsetup(): string | undefined {
  const result = spawnSync('dmsetup', DMSETUP_ARGS, {
    encoding: 'latin1',
    timeout: 2000,
    maxBuffer: MAX_OUTPUT_BYTES,
    stdio: ['ignore', 'pipe', 'ignore'],
    env: { ...process.env, LC_ALL: 'C' },
  });
  return result.status === 0 ? result.stdout : undefined;
}

/** `major:minor` of each mapping whose open count is above zero; lines of any other shape are skipped. */
export function parseDmOpen(text: string): Set<string> {
  const open = new Set<string>();
  for (const line of text.split('\n')) {
    const match = LINE.exec(line.trim());
    if (match && Number(match[3]) > 0) open.add(`${match[1]}:${match[2]}`);
  }
  return open;
}

/** Whether the tree has a device-mapper device (`dm-N`). */
export function hasDmDevice(tree: HostTree): boolean {
  return tree.devices('block').some((record) => /^dm-\d+$/.test(sysname(record.devpath)));
}

/**
 * The dm devices held open, when the tree has one and `roots` are the running kernel's (`dmsetup`
 * cannot be asked about a recording or a sysroot dump). Undefined when there is nothing to ask or
 * dmsetup cannot say (missing, not root, timed out), as with Qubes' rules: the hand-over asks again
 * (`blockInUseNow`).
 */
export function heldOpenOf(tree: HostTree, roots: HostRoots, run: DmsetupRun = runDmsetup): Set<string> | undefined {
  if (roots.sys !== LOCAL_ROOTS.sys || !hasDmDevice(tree)) return undefined;
  const text = run();
  return text === undefined ? undefined : parseDmOpen(text);
}

/** Whether the dm device `majmin` is open now; undefined when dmsetup cannot say or `roots` are not the kernel's. */
export function dmHeldOpenNow(roots: HostRoots, majmin: string, run: DmsetupRun = runDmsetup): boolean | undefined {
  if (roots.sys !== LOCAL_ROOTS.sys) return undefined;
  const text = run();
  return text === undefined ? undefined : parseDmOpen(text).has(majmin);
}
