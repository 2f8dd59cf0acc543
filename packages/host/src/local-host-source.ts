import * as fs from 'node:fs';
import * as path from 'node:path';
import { Observable, shareReplay } from 'rxjs';
import {
  type AttachSpec,
  type DeviceInfo,
  type DeviceSource,
  HostTree,
  findExecutable,
  type HostUsage,
  type RawDeviceRecord,
} from '@devgate/core';
import { hostDataPath } from './host-data-path.js';
import {
  type HostRoots,
  LISTED_SUBSYSTEMS,
  LOCAL_ROOTS,
  readDeviceWithAncestors,
  type UsageFiles,
  parseUsage,
  readHostTree,
  readUsageFiles,
  subsystemLists,
} from './sysfs-reader.js';
import { BlockProbes } from './block-probes.js';
import { hasDmDevice, heldOpenOf } from './dm-open.js';
import { excludedLoopsOf } from './excluded-images.js';
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
  /**
   * Read udevd's database and events (default). false reads the host as one without udevd is read
   * (kernel uevents, blkid's probes), whether or not one runs: the fallback's own tests.
   */
  readonly udev?: boolean;
  /** The udevadm whose monitor reports uevents (default: `udevadm`, found on PATH). */
  readonly udevadm?: string;
  /** The blkid to run (default: `blkid`, found on PATH). */
  readonly blkid?: string;
  /** How long one blkid run may take before it is killed and its devices probed again (default 10 s). */
  readonly probeTimeoutMs?: number;
}

/** Coalescing of hotplug bursts: wait this long for a pause, and never longer than the maximum. */
const BURST_QUIET_MS = 2;
const BURST_MAX_MS = 12;
/**
 * Mounts and swaps make no uevent: their files are read this often and compared. A hotplug pass
 * reads them again only when they are older than USAGE_FRESH_MS (a burst is dozens of passes).
 */
const USAGE_POLL_MS = 1000;
const USAGE_FRESH_MS = 250;

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
  /** blkid's findings where udev has none (hosts without udevd); absent when not probing. */
  private readonly probes?: BlockProbes;
  /** Whether a live subscription's hotplug mechanism is listening, and who waits for it. */
  /** dmsetup's last answer: asked at most every USAGE_FRESH_MS, not once per pass of a burst. */
  private heldOpenRead?: { readonly at: number; readonly heldOpen: ReadonlySet<string> | undefined };
  private listening = false;
  private readonly listeningWaiters: (() => void)[] = [];
  /** Subsystems the drivers asked for beyond the built-in lists (see readSubsystems). */
  private subsystems: readonly string[] = [];

  constructor(private readonly options: LocalHostOptions = {}) {
    const roots = options.roots ?? LOCAL_ROOTS;
    this.roots = options.udev === false ? { ...roots, udevData: '' } : roots;
    this.backend = options.backend ?? 'dom0';
    this.id = `local:${this.roots.sys}`;
    const isRealHost = this.roots.sys === '/sys';
    this.hotplug = chooseHotplug(options.hotplug ?? 'auto', isRealHost);
    if (options.probeBlock ?? (isRealHost && process.getuid?.() === 0)) {
      this.probes = new BlockProbes(this.roots.dev, {
        blkid: options.blkid,
        timeoutMs: options.probeTimeoutMs,
        // A one-shot read queues every probe in one pass: nothing more will join the batch.
        batchDelayMs: this.hotplug === 'static' ? 0 : undefined,
      });
    }
    this.trees$ = new Observable<HostTree>((subscriber) => {
      let devices = new Map<string, RawDeviceRecord>();
      let fullRescan = true;
      let events: KernelUevent[] = [];
      // A device's kernel and udev events come from two sockets, merged by udevadm in whatever
      // order it reads them: udev's event of a device can come after a newer kernel event of it
      // (its removal), and a kernel event after udev's own event of it (udevadm behind, under
      // load). They are ordered by SEQNUM, and udev's after the kernel's of the same SEQNUM: the
      // newest event each device (or a parent's removal) had is the one that counts.
      const newest = new Map<string, number>();
      const removedAt = new Map<string, number>();
      let pending: NodeJS.Timeout | undefined;
      let burstStarted = 0;
      let lastEvent = 0;
      let usage: { files: UsageFiles; at: number; parsed: HostUsage } | undefined;
      const currentUsage = (): HostUsage => {
        const now = Date.now();
        if (usage && now - usage.at < USAGE_FRESH_MS) return usage.parsed;
        const files = readUsageFiles(this.roots);
        const same = usage && files.mountinfo === usage.files.mountinfo && files.swaps === usage.files.swaps;
        usage = { files, at: now, parsed: same ? usage!.parsed : parseUsage(files, this.roots) };
        return usage.parsed;
      };
      const flush = () => {
        pending = undefined;
        try {
          if (fullRescan)
            devices = new Map(
              readHostTree(this.roots, this.subsystems)
                .devices()
                .map((r) => [r.devpath, r]),
            );
          else {
            for (const event of events) {
              if (outdated(event)) continue;
              this.apply(devices, event);
            }
          }
          fullRescan = false;
          events = [];
          subscriber.next(this.complete(new HostTree(devices.values(), currentUsage())));
          this.probes?.emitted();
        } catch (error) {
          subscriber.error(error);
        }
      };
      // A burst of events (a disk and its partitions) is coalesced into one new tree: it is built
      // once the events pause for a moment, and at least every BURST_MAX_MS while they keep coming.
      // One timer per pause, not one per event: a burst of 256 partitions is a thousand events.
      const schedule = () => {
        lastEvent = Date.now();
        if (pending) return;
        burstStarted = lastEvent;
        pending = setTimeout(wake, BURST_QUIET_MS);
      };
      const wake = () => {
        const now = Date.now();
        const quietFor = now - lastEvent;
        if (quietFor >= BURST_QUIET_MS || now - burstStarted >= BURST_MAX_MS) flush();
        else pending = setTimeout(wake, BURST_QUIET_MS - quietFor);
      };
      const rescan = () => {
        fullRescan = true;
        schedule();
      };
      const order = (event: KernelUevent) => Number(event.properties.SEQNUM) * 2 + (event.source === 'udev' ? 1 : 0);
      const onUevent = (event: KernelUevent) => {
        const at = order(event);
        if (Number.isFinite(at)) {
          if (at > (newest.get(event.devpath) ?? -1)) newest.set(event.devpath, at);
          const gone =
            event.action === 'remove'
              ? event.devpath
              : event.action === 'move'
                ? event.properties.DEVPATH_OLD
                : undefined;
          if (gone && at > (removedAt.get(gone) ?? -1)) removedAt.set(gone, at);
        }
        events.push(event);
        schedule();
      };
      /**
       * An event overtaken by a newer one of the same device, or by a parent's removal. Applied, a
       * late udev `add` would list a removed device, a late `remove` drop a re-added one, a late
       * kernel event replace udev's findings with none.
       */
      const outdated = (event: KernelUevent): boolean => {
        const at = order(event);
        if (!Number.isFinite(at)) return false;
        if ((newest.get(event.devpath) ?? -1) > at) return true;
        for (
          let dir = path.posix.dirname(event.devpath);
          dir.length > '/devices'.length;
          dir = path.posix.dirname(dir)
        ) {
          if ((removedAt.get(dir) ?? -1) > at) return true;
        }
        return false;
      };
      // Probe results change no sysfs record: the same devices are emitted again, with them.
      const reprobe = () => schedule();
      this.probes?.listeners.add(reprobe);
      flush();
      const stop = this.watch(rescan, onUevent);
      const usagePoll = setInterval(() => {
        const files = readUsageFiles(this.roots);
        if (files.mountinfo !== usage?.files.mountinfo || files.swaps !== usage.files.swaps) {
          // What was just read is what the pass it schedules lists: not read a second time.
          usage = { files, at: Date.now(), parsed: parseUsage(files, this.roots) };
          schedule();
        }
      }, USAGE_POLL_MS);
      usagePoll.unref();
      return () => {
        this.probes?.listeners.delete(reprobe);
        if (pending) clearTimeout(pending);
        clearInterval(usagePoll);
        stop();
      };
    }).pipe(shareReplay({ bufferSize: 1, refCount: true }));
  }

  /** A uevent applied to the known devices: the device read again, or it and its children dropped. */
  private apply(devices: Map<string, RawDeviceRecord>, event: KernelUevent): void {
    const dropUnder = (devpath: string) => {
      // A Map may lose entries while it is iterated: no copy of every key per removed device.
      const under = devpath + '/';
      for (const key of devices.keys()) if (key === devpath || key.startsWith(under)) devices.delete(key);
    };
    if (event.action === 'remove') {
      dropUnder(event.devpath);
      if (holdsOthers(event)) this.rereadHolding(devices, path.posix.basename(event.devpath), []);
      return;
    }
    if (event.action === 'move' && event.properties.DEVPATH_OLD) dropUnder(event.properties.DEVPATH_OLD);
    const listed = LISTED_SUBSYSTEMS.has(event.subsystem) || this.subsystems.includes(event.subsystem);
    if (!listed && !devices.has(event.devpath)) return;
    // A `change` says the content may differ (a new filesystem, a new table): blkid looks again.
    if (event.action === 'change') this.probes?.forget(event.devpath);
    const fromUevent = event.action === 'add' || event.action === 'change' ? event.properties : undefined;
    // Until udevd has processed a kernel `add`, its database entry under that major:minor is a
    // removed device's: its labels would be listed for the new one. udev's own event brings them.
    // udev's own event carries its database entry's properties: the file need not be read.
    const udevDatabase =
      !(event.source === 'kernel' && event.action === 'add') && !(event.source === 'udev' && fromUevent);
    // A kernel `add` or `change` is followed by udev's own event of it, with its findings: blkid
    // need not look meanwhile (block-probes.ts).
    const udevFollows = event.source === 'kernel' && fromUevent !== undefined;
    const known = (d: string) => devices.has(d);
    // udev's event of what the kernel's event (same SEQNUM) was just read for: sysfs is not read again.
    const previous = devices.get(event.devpath);
    const sameEvent =
      event.source === 'udev' && fromUevent && previous && readFor.get(previous) === event.properties.SEQNUM
        ? previous
        : undefined;
    const options = { udevDatabase, udevFollows, sameEvent };
    for (const record of readDeviceWithAncestors(this.roots, event.devpath, known, fromUevent, options)) {
      devices.set(record.devpath, record);
      if (record.devpath === event.devpath && event.source === 'kernel' && event.properties.SEQNUM) {
        readFor.set(record, event.properties.SEQNUM);
      }
    }
    if (holdsOthers(event)) {
      const slaves = devices.get(event.devpath)?.entries?.('slaves') ?? [];
      this.rereadHolding(devices, path.posix.basename(event.devpath), slaves);
    }
  }

  /**
   * A device-mapper or RAID device set up on listed devices, or taken down, makes no uevent for
   * them: their `holders` changed all the same (what is built on a device makes it busy). The
   * devices whose holders, as read, disagree with `holder`'s `slaves` now (none once it is
   * removed) are read again.
   */
  private rereadHolding(devices: Map<string, RawDeviceRecord>, holder: string, slaves: readonly string[]): void {
    const stale: string[] = [];
    for (const record of devices.values()) {
      if (record.subsystem !== 'block') continue;
      const held = (record.entries?.('holders') ?? []).includes(holder);
      if (held !== slaves.includes(path.posix.basename(record.devpath))) stale.push(record.devpath);
    }
    for (const devpath of stale) {
      for (const record of readDeviceWithAncestors(this.roots, devpath, (d) => devices.has(d)))
        devices.set(record.devpath, record);
    }
  }

  /**
   * Resolves true once a live subscription's hotplug mechanism listens (for uevents: udevadm has
   * bound its sockets, so no later event is missed), or false after `timeoutMs`.
   */
  whenListening(timeoutMs = 5000): Promise<boolean> {
    if (this.listening) return Promise.resolve(true);
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        const at = this.listeningWaiters.indexOf(wake);
        if (at >= 0) this.listeningWaiters.splice(at, 1);
        resolve(false);
      }, timeoutMs);
      this.listeningWaiters.push(wake);
    });
  }

  private setListening(listening: boolean): void {
    this.listening = listening;
    if (listening) this.listeningWaiters.splice(0).forEach((wake) => wake());
  }

  /** Resolves once no blkid probe is running (at most `timeoutMs` later). */
  whenProbed(timeoutMs = 3000): Promise<void> {
    return this.probes?.whenIdle(timeoutMs) ?? Promise.resolve();
  }

  /** A fresh tree, without subscribing: what a one-shot command needs. */
  snapshot(): HostTree {
    return this.complete(readHostTree(this.roots, this.subsystems));
  }

  /**
   * A tree as read, with what sysfs does not say: the dm devices held open, the loop devices a flag
   * file excludes, and blkid's probes.
   */
  private complete(tree: HostTree): HostTree {
    const heldOpen = this.heldOpenIn(tree);
    const excludedLoops = excludedLoopsOf(tree, this.roots);
    const known =
      heldOpen || excludedLoops
        ? new HostTree(tree.devices(), {
            ...tree.usage,
            ...(heldOpen ? { heldOpen } : {}),
            ...(excludedLoops ? { excludedLoops } : {}),
          })
        : tree;
    return this.probes?.withProbes(known) ?? known;
  }

  /** The dm devices held open, when the tree has one: dmsetup's answer, if under USAGE_FRESH_MS old. */
  private heldOpenIn(tree: HostTree): ReadonlySet<string> | undefined {
    if (!hasDmDevice(tree)) return undefined;
    const now = Date.now();
    if (!this.heldOpenRead || now - this.heldOpenRead.at >= USAGE_FRESH_MS)
      this.heldOpenRead = { at: now, heldOpen: heldOpenOf(tree, this.roots) };
    return this.heldOpenRead.heldOpen;
  }

  private watch(rescan: () => void, onUevent: (event: KernelUevent) => void): () => void {
    switch (this.hotplug) {
      case 'uevent': {
        const monitor = new UeventMonitor(
          onUevent,
          () => {
            // udevadm went away: fall back rather than go blind.
            this.setListening(false);
            this.hotplug = 'fs.watch';
            stopFallback = this.watch(rescan, onUevent);
          },
          () => {
            // udevadm has bound its sockets: catch what changed before, then trust the events.
            clearTimeout(settle);
            rescan();
            this.setListening(true);
          },
        );
        let stopFallback = () => {};
        monitor.start(this.options.udevadm ?? 'udevadm', { udev: this.options.udev !== false });
        // An udevadm that prints no header: catch up after a moment all the same.
        const settle = setTimeout(rescan, 250);
        settle.unref();
        return () => {
          clearTimeout(settle);
          monitor.stop();
          stopFallback();
          this.setListening(false);
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
        if (watchers.length > 0) {
          this.setListening(true);
          return () => {
            watchers.forEach((w) => w.close());
            this.setListening(false);
          };
        }
        this.hotplug = 'poll';
        return this.watch(rescan, onUevent);
      }
      case 'poll': {
        const timer = setInterval(rescan, this.options.pollIntervalMs ?? 1000);
        timer.unref();
        this.setListening(true);
        return () => {
          clearInterval(timer);
          this.setListening(false);
        };
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
    this.probes?.dispose();
  }
}

/** Only whole block devices (device-mapper, RAID, bcache) are built on others; partitions never are. */
function holdsOthers(event: KernelUevent): boolean {
  return event.subsystem === 'block' && event.properties.DEVTYPE !== 'partition';
}

/** The SEQNUM of the kernel event a record was read for. */
const readFor = new WeakMap<RawDeviceRecord, string>();

function chooseHotplug(wanted: HotplugMechanism | 'auto', isRealHost: boolean): HotplugMechanism {
  if (wanted !== 'auto') return wanted;
  if (isRealHost && findExecutable('udevadm')) return 'uevent';
  return 'fs.watch';
}
