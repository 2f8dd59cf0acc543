/**
 * IOMMU group layouts for recordings that have none. No permissively licensed whole-machine dump
 * records `iommu_group` (shared/reference/input-pci.md, C), so tests lay real layouts over real
 * recordings: each layout below names the machine family it comes from. The overlay adds the
 * `iommu_group` link each PCI function would have, exactly as sysfs has it; nothing else changes.
 */
import { HostTree, type RawDeviceRecord, sysname } from '@devgate/core';

/** SBDF -> group number. Functions left out get no group (as on a host without an IOMMU). */
export type GroupLayout = Readonly<Record<string, number>>;

export function withIommuGroups(tree: HostTree, layout: GroupLayout): HostTree {
  const records = tree.devices().map((record): RawDeviceRecord => {
    const group = record.subsystem === 'pci' ? layout[sysname(record.devpath)] : undefined;
    if (group === undefined) return record;
    const depth = record.devpath.split('/').length - 2;
    const target = `${'../'.repeat(depth)}kernel/iommu_groups/${group}`;
    return {
      devpath: record.devpath,
      subsystem: record.subsystem,
      properties: record.properties,
      attribute: (name) => record.attribute(name),
      entries: (name) => record.entries?.(name),
      link: (name) => (name === 'iommu_group' ? target : record.link?.(name)),
    };
  });
  return new HostTree(records, tree.usage);
}

/**
 * Intel 100-series (Skylake) PCH and later (Z370, Alder Lake): the xHCI at 00:14.0 is a function of a
 * multifunction device without ACS, so it shares its group with 00:14.2 (the thermal subsystem, or
 * "RAM memory" on newer chipsets): the layout the reference names (input-pci.md, B2). The other
 * functions of the PCH get groups of their own, as they do on those boards.
 */
export function intelPchLayout(tree: HostTree): GroupLayout {
  const layout: Record<string, number> = {};
  let next = 1;
  for (const record of tree.devices('pci')) {
    const sbdf = sysname(record.devpath);
    if (sbdf === '0000:00:14.2') continue;
    layout[sbdf] = next++;
    if (sbdf === '0000:00:14.0') layout['0000:00:14.2'] = layout[sbdf];
  }
  return layout;
}

/** One group per function: a host whose every function is isolated (ACS everywhere). */
export function isolatedLayout(tree: HostTree): GroupLayout {
  return Object.fromEntries(tree.devices('pci').map((r, i) => [sysname(r.devpath), i + 1]));
}
