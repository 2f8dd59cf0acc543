import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { Observable, shareReplay } from 'rxjs';
import { type AttachSpec, type DeviceInfo, type DeviceSource, HostTree, type RawDeviceRecord } from '@devgate/core';
import { hostDataPath } from './host-data-path.js';
import {
  type HostRoots,
  LISTED_SUBSYSTEMS,
  LOCAL_ROOTS,
  readDeviceWithAncestors,
  readHostTree,
  readUsage,
  subsystemLists,
} from './sysfs-reader.js';
import { parseKeyValueLines } from './parse-udev-data.js';
import { type KernelUevent, UeventMonitor } from './uevent-monitor.js';

export type HotplugMechanism = 'uevent' | 'fs.watch' | 'poll' | 'static';

export interface LocalHostOptions {
  readonly backend?: string;
  readonly roots?: HostRoots;
  /** `auto` picks the best mechanism available (see `chooseHotplug`). */
  readonly hotplug?: HotplugMechanism | 'auto';
  readonly pollIntervalMs?: number;
  /**
   * Probe block devices with `blkid -p` for labels and filesystem types when udev has no record
   * of them (hosts without udevd). Needs read access to the device nodes; default: only as root
   * on the real host.
   */
  readonly probeBlock?: boolean;
}

/** Coalescing of hotplug bursts: wait this long for a pause, and never longer than the maximum. */
const BURST_QUIET_MS = 2;
const BURST_MAX_MS = 12;

/** blkid runs on up to this many devices at once, in at most two processes: forking is the cost. */
const PROBE_BATCH = 64;
const PROBE_DELAY_MS = 50;
const MAX_PARALLEL_PROBES = 2;

/** The directories whose entries appear and vanish on hotplug in a tree laid out like `/`. */
const WATCHED_LISTS = ['class/block', 'bus/usb/devices', 'class/input', 'bus/pci/devices'];

/**
 * A backend's devices read from sysfs. Hotplug, in order of preference: kernel uevents (real
 * /sys with udevadm installed: 1-3 ms latency, full properties); fs.watch on /dev (devtmpfs) and,
 * for a --sysroot tree, on its class and bus directories; polling when neither can run.
 */
export class LocalHostSource implements DeviceSource {
  readonly id: string;
  readonly backend: string;
  readonly trees$: Observable<HostTree>;
  hotplug: HotplugMechanism;
  readonly roots: HostRoots;
  private readonly probes = new Map<string, Record<string, string> | 'pending'>();
  private readonly probeBlock: boolean;
  private probesRunning = 0;
  private probesActive = 0;
  private readonly probeQueue: { key: string; node: string }[] = [];
  private readonly probed = new WeakMap<RawDeviceRecord, RawDeviceRecord>();
  /** Rescans of the live subscriptions, run when a probe finds something. */
  private readonly probeListeners = new Set<() => void>();
  private readonly probeWaiters: (() => void)[] = [];
  /** Subsystems the drivers asked for beyond the built-in lists (see readSubsystems). */
  private subsystems: readonly string[] = [];

  constructor(private readonly options: LocalHostOptions = {}) {
    this.roots = options.roots ?? LOCAL_ROOTS;
    this.backend = options.backend ?? 'dom0';
    this.id = `local:${this.roots.sys}`;
    const isRealHost = this.roots.sys === '/sys';
    this.probeBlock = options.probeBlock ?? (isRealHost && process.getuid?.() === 0);
    this.hotplug = chooseHotplug(options.hotplug ?? 'auto', isRealHost);
    this.trees$ = new Observable<HostTree>((subscriber) => {
      let devices = new Map<string, RawDeviceRecord>();
      let fullRescan = true;
      let events: KernelUevent[] = [];
      let pending: NodeJS.Timeout | undefined;
      let burstStarted = 0;
      const flush = () => {
        pending = undefined;
        try {
          if (fullRescan)
            devices = new Map(
              readHostTree(this.roots, this.subsystems)
                .devices()
                .map((r) => [r.devpath, r]),
            );
          else for (const event of events) this.apply(devices, event);
          fullRescan = false;
          events = [];
          subscriber.next(this.withProbes(new HostTree(devices.values(), readUsage(this.roots))));
          if (this.probesRunning === 0) this.wakeProbeWaiters();
        } catch (error) {
          subscriber.error(error);
        }
      };
      // A burst of events (a disk and its partitions) is coalesced into one new tree: it is built
      // once the events pause for a moment, and at least every BURST_MAX_MS while they keep coming.
      const schedule = () => {
        const now = Date.now();
        if (!pending) burstStarted = now;
        else clearTimeout(pending);
        pending = setTimeout(flush, now - burstStarted >= BURST_MAX_MS ? 0 : BURST_QUIET_MS);
      };
      const rescan = () => {
        fullRescan = true;
        schedule();
      };
      const onUevent = (event: KernelUevent) => {
        events.push(event);
        schedule();
      };
      // Probe results change no sysfs record: the same devices are emitted again, with them.
      const reprobe = () => schedule();
      this.probeListeners.add(reprobe);
      flush();
      const stop = this.watch(rescan, onUevent);
      return () => {
        this.probeListeners.delete(reprobe);
        if (pending) clearTimeout(pending);
        stop();
      };
    }).pipe(shareReplay({ bufferSize: 1, refCount: true }));
  }

  /** A uevent applied to the known devices: the device read again, or it and its children dropped. */
  private apply(devices: Map<string, RawDeviceRecord>, event: KernelUevent): void {
    const dropUnder = (devpath: string) => {
      for (const key of [...devices.keys()]) if (key === devpath || key.startsWith(devpath + '/')) devices.delete(key);
    };
    if (event.action === 'remove') return dropUnder(event.devpath);
    if (event.action === 'move' && event.properties.DEVPATH_OLD) dropUnder(event.properties.DEVPATH_OLD);
    const listed = LISTED_SUBSYSTEMS.has(event.subsystem) || this.subsystems.includes(event.subsystem);
    if (!listed && !devices.has(event.devpath)) return;
    const fromUevent = event.action === 'add' || event.action === 'change' ? event.properties : undefined;
    for (const record of readDeviceWithAncestors(this.roots, event.devpath, (d) => devices.has(d), fromUevent)) {
      devices.set(record.devpath, record);
    }
  }

  /** Resolves once no blkid probe is running (at most `timeoutMs` later). */
  whenProbed(timeoutMs = 3000): Promise<void> {
    if (this.probesRunning === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.probeWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private wakeProbeWaiters(): void {
    this.probeWaiters.splice(0).forEach((wake) => wake());
  }

  /** A fresh tree, without subscribing: what a one-shot command needs. */
  snapshot(): HostTree {
    return this.withProbes(readHostTree(this.roots, this.subsystems));
  }

  private withProbes(tree: HostTree): HostTree {
    if (!this.probeBlock) return tree;
    return new HostTree(
      tree.devices().map((record) => this.withProbe(record)),
      tree.usage,
    );
  }

  /** Adds blkid's findings to block devices udev knows nothing about; probes run in the background. */
  private withProbe(record: RawDeviceRecord): RawDeviceRecord {
    if (record.subsystem !== 'block' || record.properties.ID_FS_TYPE || record.properties.ID_PART_TABLE_TYPE) {
      return record;
    }
    const devname = record.properties.DEVNAME;
    if (!devname) return record;
    const key = `${record.devpath}|${record.properties.DISKSEQ ?? ''}|${record.attribute('size') ?? ''}`;
    const known = this.probes.get(key);
    if (known === undefined) {
      this.probes.set(key, 'pending');
      this.probesRunning++;
      const node = path.join(this.roots.dev, devname.replace(/^\/dev\//, ''));
      this.probeQueue.push({ key, node });
      // Probe after a short pause, so a burst (a disk and its partitions) is probed together, and
      // forking blkid does not hold up the burst's own events.
      if (this.probeQueue.length === 1) setTimeout(() => this.drainProbes(), PROBE_DELAY_MS);
      return record;
    }
    if (known === 'pending') return record;
    // The same wrapped record each time, so drivers can tell it did not change.
    const wrapped = this.probed.get(record);
    if (wrapped) return wrapped;
    const fresh = { ...record, properties: { ...known, ...record.properties } };
    this.probed.set(record, fresh);
    return fresh;
  }

  /** Runs queued probes in batches: a disk with 256 partitions must not fork 256 blkids. */
  private drainProbes(): void {
    while (this.probesActive < MAX_PARALLEL_PROBES && this.probeQueue.length > 0) {
      this.probesActive++;
      this.probe(this.probeQueue.splice(0, PROBE_BATCH));
    }
  }

  private probe(batch: { key: string; node: string }[]): void {
    const nodes = batch.map((entry) => entry.node);
    execFile('blkid', ['-p', '-o', 'export', ...nodes], { timeout: 10_000 }, (_error, stdout) => {
      // One block per device that blkid recognized, each with its DEVNAME; the others found nothing.
      const byNode = new Map<string, Record<string, string>>();
      for (const block of (stdout ?? '').split('\n\n')) {
        const found = parseKeyValueLines(block);
        if (found.DEVNAME) byNode.set(found.DEVNAME, found);
      }
      let foundAny = false;
      for (const { key, node } of batch) {
        const found = byNode.get(node) ?? {};
        const properties: Record<string, string> = {};
        for (const [k, v] of Object.entries(found)) if (k !== 'DEVNAME') properties[`ID_${k}`] = v;
        // blkid names them TYPE/LABEL/PTTYPE; udev's names are ID_FS_TYPE/ID_FS_LABEL/ID_PART_TABLE_TYPE.
        if (found.TYPE) properties.ID_FS_TYPE = found.TYPE;
        if (found.LABEL) properties.ID_FS_LABEL = found.LABEL;
        if (found.PTTYPE) properties.ID_PART_TABLE_TYPE = found.PTTYPE;
        this.probes.set(key, properties);
        foundAny ||= Object.keys(found).length > 0;
      }
      if (foundAny) this.probeListeners.forEach((rescan) => rescan());
      this.probesActive--;
      this.drainProbes();
      this.probesRunning -= batch.length;
      // With a live subscription, the new tree carries the findings: the flush wakes the waiters.
      if (this.probesRunning === 0 && (!foundAny || this.probeListeners.size === 0)) this.wakeProbeWaiters();
    });
  }

  private watch(rescan: () => void, onUevent: (event: KernelUevent) => void): () => void {
    switch (this.hotplug) {
      case 'uevent': {
        const monitor = new UeventMonitor(onUevent, () => {
          // udevadm went away: fall back rather than go blind.
          this.hotplug = 'fs.watch';
          stopFallback = this.watch(rescan, onUevent);
        });
        let stopFallback = () => {};
        monitor.start();
        // udevadm needs a moment to bind its socket; catch what changed in between.
        const settle = setTimeout(rescan, 250);
        settle.unref();
        return () => {
          clearTimeout(settle);
          monitor.stop();
          stopFallback();
        };
      }
      case 'fs.watch': {
        const watchers: fs.FSWatcher[] = [];
        const lists = [...WATCHED_LISTS, ...subsystemLists(this.subsystems)];
        const dirs = [this.roots.dev, ...lists.map((list) => path.join(this.roots.sys, list))];
        for (const dir of dirs) {
          try {
            watchers.push(fs.watch(dir, { persistent: false }, rescan));
          } catch {
            // Missing directories are normal (no USB bus here); the others still report.
          }
        }
        if (watchers.length > 0) return () => watchers.forEach((w) => w.close());
        this.hotplug = 'poll';
        return this.watch(rescan, onUevent);
      }
      case 'poll': {
        const timer = setInterval(rescan, this.options.pollIntervalMs ?? 1000);
        timer.unref();
        return () => clearInterval(timer);
      }
      case 'static':
        return () => {};
    }
  }

  /** Also lists the devices of these sysfs classes or buses (the drivers' manifest `subsystems`). */
  readSubsystems(subsystems: readonly string[]): void {
    this.subsystems = [...new Set([...this.subsystems, ...subsystems])].sort();
  }

  /** This host's own nodes and USB ports, checked against what was listed. */
  dataPath(device: DeviceInfo, spec: AttachSpec): Promise<AttachSpec> {
    return hostDataPath(this.roots, device, spec);
  }

  dispose(): void {
    this.probes.clear();
  }
}

function chooseHotplug(wanted: HotplugMechanism | 'auto', isRealHost: boolean): HotplugMechanism {
  if (wanted !== 'auto') return wanted;
  if (isRealHost && hasExecutable('udevadm')) return 'uevent';
  return 'fs.watch';
}

function hasExecutable(name: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => {
    try {
      fs.accessSync(path.join(dir, name), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}
