/**
 * PCI addresses and Qubes' port ids for them.
 *
 * An SBDF is `SSSS:BB:DD.F` (segment, bus, device, function), the name of the device directory in
 * sysfs. Qubes 4.3 names a PCI port by its *path*, which stays put when bus numbers move (a card added
 * in front of it, a Thunderbolt dock): `[SSSS_]BB_DD.F[-OO_DD.F...]`, the device on the root bus first,
 * then one `-OO_DD.F` per bridge hop, where `OO` is the bus number relative to the bridge's secondary
 * bus. `0000:c1:00.0` behind the bridge `00:08.1` is `00_08.1-00_00.0`; a device on the root bus keeps
 * the old BDF form (`00_14.0`), which is also what Qubes 4.0-4.2 called every device.
 */

export const SBDF = /^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$/;
/** The host bridge's directory in sysfs: `pci0000:00` (segment and root bus). */
const ROOT = /^pci([0-9a-f]{4,8}):([0-9a-f]{2})$/;

export interface PciAddress {
  readonly segment: number;
  readonly bus: number;
  readonly device: number;
  readonly fn: number;
}

export function parseSbdf(text: string): PciAddress | undefined {
  const m = SBDF.exec(text);
  if (!m) return undefined;
  return { segment: parseInt(m[1], 16), bus: parseInt(m[2], 16), device: parseInt(m[3], 16), fn: Number(m[4]) };
}

export function isSbdf(text: string): boolean {
  return SBDF.test(text);
}

const hex = (n: number, width = 2) => n.toString(16).padStart(width, '0');

/** `BB_DD.F`: one hop of a path, or a whole pre-4.3 port id. */
function hop(bus: number, address: PciAddress): string {
  return `${hex(bus)}_${hex(address.device)}.${address.fn}`;
}

/**
 * The port id of the device at `devpath`. `secondaryBus(sbdf)` gives a bridge's secondary bus when the
 * source knows it (sysfs `secondary_bus_number`); otherwise the child's own bus is its parent's
 * secondary bus, which is what sysfs nesting means.
 */
export function pciPortId(
  devpath: string,
  secondaryBus: (sbdf: string) => number | undefined = () => undefined,
): string {
  const parts = devpath.split('/');
  const own = parseSbdf(parts[parts.length - 1] ?? '');
  if (!own) throw new Error(`not a PCI device path: ${devpath}`);
  // The PCI functions on the path, from the last host bridge directory down to the device.
  let rootIndex = -1;
  for (let i = parts.length - 1; i >= 0; i--) {
    if (ROOT.test(parts[i])) {
      rootIndex = i;
      break;
    }
  }
  const chain = rootIndex < 0 ? [parts[parts.length - 1]] : parts.slice(rootIndex + 1).filter(isSbdf);
  if (chain.length === 0 || chain[chain.length - 1] !== parts[parts.length - 1]) return legacyPortId(own);
  const first = parseSbdf(chain[0])!;
  const segment = first.segment === 0 ? '' : `${hex(first.segment, 4)}_`;
  const hops = [segment + hop(first.bus, first)];
  for (let i = 1; i < chain.length; i++) {
    const address = parseSbdf(chain[i])!;
    const parentSecondary = secondaryBus(chain[i - 1]) ?? address.bus;
    hops.push(hop(Math.max(0, address.bus - parentSecondary), address));
  }
  return hops.join('-');
}

/** Qubes 4.0-4.2's port id: the BDF with `_` for `:` and no segment (`00_14.0`). */
export function legacyPortId(address: PciAddress): string {
  return hop(address.bus, address);
}

export function formatSbdf(address: PciAddress): string {
  return `${hex(address.segment, 4)}:${hex(address.bus)}:${hex(address.device)}.${address.fn}`;
}
