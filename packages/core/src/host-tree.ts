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
  /**
   * `major:minor` of every device-mapper device some program holds open (a volume a VM runs from, a
   * mapping in use), where the backend could tell: sysfs has no open count.
   */
  readonly heldOpen?: ReadonlySet<string>;
  /** `major:minor` of the loop devices whose image a `.qubes-exclude-block-devices` file excludes. */
  readonly excludedLoops?: ReadonlySet<string>;
}

export const NO_USAGE: HostUsage = { mounted: new Set(), swaps: new Set() };

export class HostTree {
  private readonly byPath = new Map<string, RawDeviceRecord>();
  private readonly bySubsystem = new Map<string, RawDeviceRecord[]>();
  /** Where each record sits, worked out for all of them on first use (see `placeRecords`). */
  private placement?: Placement;

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
    const place = this.placed().byPath.get(device.devpath);
    if (place) return place.parent;
    // Not a path of this tree (no driver asks for one): walk up, hashing a prefix per segment.
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

  /** Recorded devices directly or indirectly under this one, in the tree's order. */
  descendants(device: RawDeviceRecord, subsystem?: string): RawDeviceRecord[] {
    const placement = this.placed();
    const place = placement.byPath.get(device.devpath);
    if (!place) {
      const prefix = device.devpath + '/';
      return this.devices(subsystem).filter((d) => d.devpath.startsWith(prefix));
    }
    return placement.sorted
      .slice(place.start + 1, place.end)
      .filter((p) => subsystem === undefined || p.record.subsystem === subsystem)
      .sort((a, b) => a.rank - b.rank)
      .map((p) => p.record);
  }

  private placed(): Placement {
    return (this.placement ??= placeRecords([...this.byPath.values()]));
  }
}

interface Place {
  readonly record: RawDeviceRecord;
  /** Its devpath and a slash: what the path of every record under it starts with. */
  readonly key: string;
  /** Its position in the tree's own order. */
  readonly rank: number;
  parent?: RawDeviceRecord;
  /** Its position in `sorted`; the records under it follow it, up to `end`. */
  start: number;
  end: number;
}

interface Placement {
  readonly byPath: ReadonlyMap<string, Place>;
  readonly sorted: readonly Place[];
}

/**
 * Every record's nearest recorded ancestor and subtree, in one pass. Sorted by devpath + '/', each
 * record is followed by exactly the records under it, so a stack of the records still open holds its
 * ancestors: linear in the paths' length after the sort. Walking up one segment at a time instead
 * hashes a fresh prefix per segment, length times depth per record: seconds for a hostile tree.
 */
function placeRecords(records: readonly RawDeviceRecord[]): Placement {
  const sorted: Place[] = records
    .map((record, rank) => ({ record, key: record.devpath + '/', rank, start: 0, end: records.length }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const byPath = new Map<string, Place>();
  const open: Place[] = [];
  sorted.forEach((place, i) => {
    while (open.length > 0 && !place.key.startsWith(open[open.length - 1].key)) open.pop()!.end = i;
    const above = open[open.length - 1];
    // `/devices` itself is nobody's parent, as for a walk up that stops there.
    if (above && above.record.devpath.length > '/devices'.length) place.parent = above.record;
    place.start = i;
    open.push(place);
    byPath.set(place.record.devpath, place);
  });
  return { byPath, sorted };
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
