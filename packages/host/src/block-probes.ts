import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { HostTree, type RawDeviceRecord } from '@devgate/core';
import { parseKeyValueLines } from './parse-udev-data.js';
import { awaitsUdev } from './sysfs-reader.js';

/** blkid runs on up to this many devices at once, in at most two processes: forking is the cost. */
const PROBE_BATCH = 64;
const PROBE_DELAY_MS = 50;
const MAX_PARALLEL_PROBES = 2;
/** Batches up to this size are opened before blkid is forked for them (see probe()). */
const OPEN_FIRST_UP_TO = 4;
/** A device whose probes keep being killed at their deadline is taken as having nothing to find. */
const MAX_PROBE_RETRIES = 3;
/**
 * Where udevd runs, a device read from the kernel's `add` is probed only if udev's own event of it
 * (which carries udev's findings) has not come this long after: forking blkid for every partition
 * of a burst that udevd probes anyway is what made hotplug slow under udevd (ADR 0015).
 */
const UDEV_GRACE_MS = 3000;

export interface BlockProbesOptions {
  /** The blkid to run (default: `blkid`, found on PATH). */
  readonly blkid?: string;
  /** How long one blkid run may take before it is killed and its devices probed again (default 10 s). */
  readonly timeoutMs?: number;
  /**
   * How long queued probes wait for more to join their batch (default 50 ms: a disk's partitions
   * come in several hotplug passes). A one-shot read queues all its probes at once: 0.
   */
  readonly batchDelayMs?: number;
}

interface ProbeToken {
  readonly probing: true;
}

interface QueuedProbe {
  readonly key: string;
  readonly node: string;
  readonly token: ProbeToken;
  /** When it began to wait for udevd (deferred probes only). */
  readonly since?: number;
}

/**
 * blkid's findings (labels, filesystem and partition table types) for block devices udev knows
 * nothing about: a host without udevd, or one whose udevd has not got to them yet. Probes run in the
 * background, in batches; what they find is merged into the device's record under udev's names, and
 * the live subscriptions (`listeners`) rescan to carry it.
 */
export class BlockProbes {
  /** Rescans of the live subscriptions, run when a probe found something or must run again. */
  readonly listeners = new Set<() => void>();
  /** Findings by device (devpath, disk sequence, size); a probe still running is its token. */
  private readonly found = new Map<string, Record<string, string> | ProbeToken>();
  /** Probes of a device killed at their deadline so far. */
  private readonly retries = new Map<string, number>();
  private readonly merged = new WeakMap<RawDeviceRecord, RawDeviceRecord>();
  /** Records that never need a probe (udev's findings, no node, empty): passed over at once. */
  private readonly settled = new WeakSet<RawDeviceRecord>();
  private readonly queue: QueuedProbe[] = [];
  /** Probes waiting for udevd's own findings (by devpath), run after UDEV_GRACE_MS if those never come. */
  private readonly deferred = new Map<string, QueuedProbe>();
  private deferTimer?: NodeJS.Timeout;
  private running = 0;
  private active = 0;
  private readonly idleWaiters: (() => void)[] = [];

  constructor(
    /** The device nodes' directory (`/dev`). */
    private readonly dev: string,
    private readonly options: BlockProbesOptions = {},
  ) {}

  withProbes(tree: HostTree): HostTree {
    const records = tree.devices();
    let changed = false;
    const probed = records.map((record) => {
      const merged = this.withProbe(record);
      changed ||= merged !== record;
      return merged;
    });
    // Nothing to merge (udevd knows every device, or no finding yet): the tree as it is.
    return changed ? new HostTree(probed, tree.usage) : tree;
  }

  /** The device's content may have changed (a `change` uevent): blkid looks again. */
  forget(devpath: string): void {
    for (const key of this.found.keys()) if (key.startsWith(`${devpath}|`)) this.found.delete(key);
    for (const key of this.retries.keys()) if (key.startsWith(`${devpath}|`)) this.retries.delete(key);
  }

  /** A live subscription emitted a tree: with no probe running, it carries every finding. */
  emitted(): void {
    if (this.running === 0) this.wakeIdleWaiters();
  }

  /** Resolves once no probe is running (at most `timeoutMs` later). */
  whenIdle(timeoutMs: number): Promise<void> {
    if (this.running === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  dispose(): void {
    if (this.deferTimer) clearTimeout(this.deferTimer);
    this.deferTimer = undefined;
    this.deferred.clear();
    this.found.clear();
    this.retries.clear();
  }

  private wakeIdleWaiters(): void {
    this.idleWaiters.splice(0).forEach((wake) => wake());
  }

  private withProbe(record: RawDeviceRecord): RawDeviceRecord {
    if (record.subsystem !== 'block' || this.settled.has(record)) return record;
    const waiting = this.deferred.size > 0 && !awaitsUdev(record) ? this.deferred.get(record.devpath) : undefined;
    // udev's findings came: the probe that waited for them is not needed. Or udev processed the
    // device and found nothing: blkid looks now rather than after the grace.
    if (waiting) this.cancelDeferred(waiting, record.devpath);
    const devname = record.properties.DEVNAME;
    const size = devname ? record.attribute('size') : undefined;
    // Nothing to find on an empty device (a free loop device, a card reader without a card), nor
    // where udev's blkid looked already (what it found, or a partition's entry without a filesystem:
    // a burst of blank partitions forked blkid for each, on a busy machine, for nothing).
    if (udevProbed(record.properties) || !devname || size === '0') {
      this.settled.add(record);
      return record;
    }
    const key = `${record.devpath}|${record.properties.DISKSEQ ?? ''}|${size ?? ''}`;
    const known = this.found.get(key);
    if (known === undefined) {
      const token: ProbeToken = { probing: true };
      this.found.set(key, token);
      this.running++;
      const node = path.join(this.dev, devname.replace(/^\/dev\//, ''));
      if (awaitsUdev(record)) {
        const replaced = this.deferred.get(record.devpath);
        if (replaced) this.cancelDeferred(replaced, record.devpath);
        this.deferred.set(record.devpath, { key, node, token, since: Date.now() });
        this.armDeferTimer(UDEV_GRACE_MS);
        return record;
      }
      this.enqueue({ key, node, token });
      return record;
    }
    if (isProbeToken(known)) return record;
    // The same merged record each time, so drivers can tell it did not change.
    const merged = this.merged.get(record);
    if (merged) return merged;
    const fresh = { ...record, properties: { ...known, ...record.properties } };
    this.merged.set(record, fresh);
    return fresh;
  }

  private enqueue(probe: QueuedProbe): void {
    this.queue.push(probe);
    // Probe after a short pause, so a burst (a disk and its partitions) is probed together, and
    // forking blkid does not hold up the burst's own events.
    if (this.queue.length === 1) setTimeout(() => this.drain(), this.options.batchDelayMs ?? PROBE_DELAY_MS);
  }

  /** A probe that waited for udevd is dropped (udev's findings came), or run now (udev found nothing). */
  private cancelDeferred(probe: QueuedProbe, devpath: string): void {
    this.deferred.delete(devpath);
    if (this.found.get(probe.key) === probe.token) this.found.delete(probe.key);
    // Idle waiters wake on the tree emitted after this one (emitted()).
    this.running--;
  }

  private armDeferTimer(delayMs: number): void {
    if (this.deferTimer) return;
    this.deferTimer = setTimeout(() => this.promoteDeferred(), delayMs);
    this.deferTimer.unref();
  }

  /** udevd did not report these devices within the grace: blkid probes them after all. */
  private promoteDeferred(): void {
    this.deferTimer = undefined;
    const now = Date.now();
    for (const [devpath, probe] of this.deferred) {
      const waited = now - (probe.since ?? 0);
      if (waited < UDEV_GRACE_MS) {
        // Oldest first: the rest waited less still.
        this.armDeferTimer(UDEV_GRACE_MS - waited);
        break;
      }
      this.deferred.delete(devpath);
      // Forgotten meanwhile (a `change`): the next tree asks for a probe of its own if it needs one.
      if (this.found.get(probe.key) === probe.token) this.enqueue(probe);
      else this.running--;
    }
    if (this.running === 0) this.wakeIdleWaiters();
  }

  /** A device that does not open has nothing blkid could find: settled without a fork. */
  private settleUnopened({ key }: QueuedProbe): void {
    this.found.set(key, {});
    this.retries.delete(key);
  }

  /** Whether the probe still stands for its device: not forgotten (a `change`, or dispose()) since queued. */
  private wanted({ key, token }: QueuedProbe): boolean {
    return this.found.get(key) === token;
  }

  /** Runs queued probes in batches: a disk with 256 partitions must not fork 256 blkids. */
  private drain(): void {
    while (this.active < MAX_PARALLEL_PROBES && this.queue.length > 0) {
      this.active++;
      void this.probe(this.queue.splice(0, PROBE_BATCH));
    }
  }

  private async probe(queued: QueuedProbe[]): Promise<void> {
    // A small batch is opened first, so a device blkid cannot open costs no fork (this machine
    // kind's root disk, denied by the device cgroup, at every listing). A big one forks blkid
    // anyway: opening every device first cost more (30 ms for 258 loop devices and partitions) than
    // blkid stopping at a device it cannot open and being run again on the rest.
    const opens =
      queued.length <= OPEN_FIRST_UP_TO
        ? await Promise.all(queued.map((entry) => opensForReading(entry.node)))
        : queued.map(() => true);
    const batch: QueuedProbe[] = [];
    for (const [i, entry] of queued.entries()) {
      // Forgotten while it waited or opened (a `change`, or dispose()): no blkid is forked for it.
      if (!this.wanted(entry)) continue;
      if (opens[i]) batch.push(entry);
      else this.settleUnopened(entry);
    }
    if (batch.length === 0) return this.finishBatch(queued.length, false);
    const nodes = batch.map((entry) => entry.node);
    const timeout = this.options.timeoutMs ?? 10_000;
    execFile(this.options.blkid ?? 'blkid', ['-p', '-o', 'export', ...nodes], { timeout }, (error, stdout, stderr) => {
      // One block per device that blkid recognized, each with its DEVNAME; the others found nothing,
      // unless blkid was killed at its deadline (a slow disk, a busy machine) before it said, or
      // stopped at a device it could not open (`blkid: error: /dev/vda: Operation not permitted`):
      // `blkid -p` probes none after that one.
      const cutShort = Boolean(error?.killed || error?.signal);
      const failed = error && !cutShort ? /^blkid: error: (\S+): /m.exec(String(stderr ?? ''))?.[1] : undefined;
      const stoppedAt = failed === undefined ? -1 : nodes.indexOf(failed);
      const byNode = new Map<string, Record<string, string>>();
      for (const block of (stdout ?? '').split('\n\n')) {
        const found = parseKeyValueLines(block);
        if (found.DEVNAME) byNode.set(found.DEVNAME, found);
      }
      let foundAny = false;
      let retry = false;
      for (const [index, entry] of batch.entries()) {
        const { key, node } = entry;
        // Forgotten while it ran (a `change`): a newer probe, or none, stands for the device now.
        if (!this.wanted(entry)) continue;
        const retries = this.retries.get(key) ?? 0;
        const unprobed = cutShort || (stoppedAt >= 0 && index > stoppedAt);
        if (unprobed && !byNode.has(node) && retries < MAX_PROBE_RETRIES) {
          // Unknown, not absent: the next pass probes it again.
          this.retries.set(key, retries + 1);
          this.found.delete(key);
          retry = true;
          continue;
        }
        this.retries.delete(key);
        const found = byNode.get(node) ?? {};
        const properties: Record<string, string> = {};
        for (const [k, v] of Object.entries(found)) if (k !== 'DEVNAME') properties[`ID_${k}`] = v;
        // blkid names them TYPE/LABEL/PTTYPE; udev's names are ID_FS_TYPE/ID_FS_LABEL/ID_PART_TABLE_TYPE.
        if (found.TYPE) properties.ID_FS_TYPE = found.TYPE;
        if (found.LABEL) properties.ID_FS_LABEL = found.LABEL;
        if (found.PTTYPE) properties.ID_PART_TABLE_TYPE = found.PTTYPE;
        this.found.set(key, properties);
        foundAny ||= Object.keys(found).length > 0;
      }
      if (foundAny || retry) this.listeners.forEach((rescan) => rescan());
      // With a live subscription, the new tree carries the findings: its emission wakes the waiters.
      this.finishBatch(queued.length, (foundAny || retry) && this.listeners.size > 0);
    });
  }

  /** A batch is done, forked for or not: the next one may start, and waiters wake once none runs. */
  private finishBatch(probes: number, rescanning: boolean): void {
    this.running -= probes;
    this.active--;
    this.drain();
    if (this.running === 0 && !rescanning) this.wakeIdleWaiters();
  }
}

/**
 * Whether the node opens for reading, as blkid opens it. A node that does not (gone, or refused: root
 * in a container whose device cgroup denies the disk) is one blkid would fail on too, after a fork,
 * and a device blkid fails on has nothing found. Opened off the event loop: opening a disk can wait
 * for the device (a media check on a slow stick).
 */
async function opensForReading(node: string): Promise<boolean> {
  try {
    await (await fs.promises.open(node, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)).close();
    return true;
  } catch {
    return false;
  }
}

function isProbeToken(value: Record<string, string> | ProbeToken): value is ProbeToken {
  return (value as Partial<ProbeToken>).probing === true;
}

/**
 * Whether udev's blkid probed the device: it names what it found (ID_FS_*, a partition table) and,
 * for a partition, the partition's table entry (ID_PART_ENTRY_*) even when there is no filesystem.
 */
function udevProbed(properties: Record<string, string>): boolean {
  return (
    properties.ID_FS_TYPE !== undefined ||
    properties.ID_PART_TABLE_TYPE !== undefined ||
    properties.ID_PART_ENTRY_SCHEME !== undefined
  );
}
