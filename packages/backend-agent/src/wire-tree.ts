/**
 * The agent's side of a tree message: a host tree as wire records, with exactly the attributes,
 * listings and links the protocol names for each subsystem (what devgate's drivers read).
 */
import { type HostTree, type RawDeviceRecord } from '@devgate/core';
import {
  PROTOCOL_VERSION,
  type TreeMessage,
  WIRE_ATTRIBUTES,
  WIRE_ENTRIES,
  WIRE_LINKS,
  type WireRecord,
} from './protocol.js';

/** How an attribute is read: the record's own reader, or a faster one that knows the files. */
export type AttributeReader = (record: RawDeviceRecord, name: string) => string | undefined;

const ownAttribute: AttributeReader = (record, name) => record.attribute(name);

export function wireRecordOf(record: RawDeviceRecord, read: AttributeReader = ownAttribute): WireRecord {
  const attributes: Record<string, string> = {};
  for (const name of WIRE_ATTRIBUTES[record.subsystem] ?? []) {
    const value = read(record, name);
    if (value !== undefined) attributes[name] = value;
  }
  const entries: Record<string, readonly string[]> = {};
  for (const name of WIRE_ENTRIES[record.subsystem] ?? []) {
    const value = record.entries?.(name);
    if (value !== undefined) entries[name] = value;
  }
  const links: Record<string, string> = {};
  const link = (record as { link?: (name: string) => string | undefined }).link;
  for (const name of WIRE_LINKS[record.subsystem] ?? []) {
    const value = link?.call(record, name);
    if (value !== undefined) links[name] = value;
  }
  return {
    devpath: record.devpath,
    subsystem: record.subsystem,
    properties: { ...record.properties },
    ...(Object.keys(attributes).length ? { attributes } : {}),
    ...(Object.keys(entries).length ? { entries } : {}),
    ...(Object.keys(links).length ? { links } : {}),
  };
}

/** A tree message; `wire` turns one record into its wire form (an agent caches them per record). */
export function treeMessageOf(
  tree: HostTree,
  seq: number,
  wire: (record: RawDeviceRecord) => WireRecord = (record) => wireRecordOf(record),
): TreeMessage {
  return {
    v: PROTOCOL_VERSION,
    type: 'tree',
    seq,
    records: tree.devices().map((record) => wire(record)),
    usage: {
      mounted: [...tree.usage.mounted],
      swaps: [...tree.usage.swaps],
      ...(tree.usage.heldOpen ? { heldOpen: [...tree.usage.heldOpen] } : {}),
      ...(tree.usage.excludedLoops ? { excludedLoops: [...tree.usage.excludedLoops] } : {}),
    },
  };
}
