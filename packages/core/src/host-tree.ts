/**
 * A backend domain's devices as the kernel sees them: sysfs device directories with their uevent
 * and udev properties, attributes and links. Device sources build it (from /sys, or from a
 * recording); class drivers read it. Everything in it is untrusted text.
 */

export interface RawDeviceRecord {
  /** The sysfs path without the `/sys` prefix: `/devices/pci0000:00/.../block/sda`. */
  readonly devpath: string;
  readonly subsystem: string;
  /** uevent plus udev database properties (DEVTYPE, DEVNAME, ID_MODEL, ...). */
  readonly properties: Readonly<Record<string, string>>;
  /** A text attribute by name; subdirectory attributes are `dir/name` (`loop/backing_file`). */
  attribute(name: string): string | undefined;
  /** The entries of a subdirectory (`holders`), when the source can list it. */
  entries?(name: string): readonly string[] | undefined;
  /** The raw target of a symlink in the device directory (`driver`, `iommu_group`), when the source has it. */
  link?(name: string): string | undefined;
}

/** What makes a block device busy in its backend, read from /proc. */
export interface HostUsage {
  /** `major:minor` of every mounted block device. */
  readonly mounted: ReadonlySet<string>;
  /** Device nodes (`/dev/sda2`) in use as swap. */
  readonly swaps: ReadonlySet<string>;
}

export const NO_USAGE: HostUsage = { mounted: new Set(), swaps: new Set() };

export class HostTree {
  private readonly byPath = new Map<string, RawDeviceRecord>();
  private readonly bySubsystem = new Map<string, RawDeviceRecord[]>();

  constructor(
    records: Iterable<RawDeviceRecord>,
    readonly usage: HostUsage = NO_USAGE,
  ) {
    for (const record of records) {
      if (this.byPath.has(record.devpath)) continue;
      this.byPath.set(record.devpath, record);
      const list = this.bySubsystem.get(record.subsystem);
      if (list) list.push(record);
      else this.bySubsystem.set(record.subsystem, [record]);
    }
  }

  get size(): number {
    return this.byPath.size;
  }

  device(devpath: string): RawDeviceRecord | undefined {
    return this.byPath.get(devpath);
  }

  devices(subsystem?: string): readonly RawDeviceRecord[] {
    if (subsystem === undefined) return [...this.byPath.values()];
    return this.bySubsystem.get(subsystem) ?? [];
  }

  /** The nearest recorded ancestor of a device. */
  parent(device: RawDeviceRecord): RawDeviceRecord | undefined {
    for (let path = dirname(device.devpath); path.length > '/devices'.length; path = dirname(path)) {
      const found = this.byPath.get(path);
      if (found) return found;
    }
    return undefined;
  }

  /** Recorded ancestors, nearest first. */
  *ancestors(device: RawDeviceRecord): Generator<RawDeviceRecord> {
    for (let p = this.parent(device); p; p = this.parent(p)) yield p;
  }

  /** Recorded devices directly or indirectly under this one. */
  descendants(device: RawDeviceRecord, subsystem?: string): RawDeviceRecord[] {
    const prefix = device.devpath + '/';
    return this.devices(subsystem).filter((d) => d.devpath.startsWith(prefix));
  }
}

export function sysname(devpath: string): string {
  return devpath.slice(devpath.lastIndexOf('/') + 1);
}

function dirname(path: string): string {
  return path.slice(0, path.lastIndexOf('/'));
}

/** A record built from plain maps, for recordings and tests. */
export function recordOf(
  devpath: string,
  subsystem: string,
  properties: Record<string, string>,
  attributes: Record<string, string> = {},
  entries: Record<string, readonly string[]> = {},
  links: Record<string, string> = {},
): RawDeviceRecord {
  return {
    devpath,
    subsystem,
    properties,
    attribute: (name) => attributes[name],
    entries: (name) => entries[name],
    link: (name) => (Object.hasOwn(links, name) ? links[name] : undefined),
  };
}
