/**
 * Parses a domain's live XML (`virsh dumpxml`) into what the connector needs: the disks, USB host
 * devices and input devices with their aliases, and devgate's own metadata. The XML comes from
 * libvirtd, but names, paths and metadata in it were written by whoever defined the domain: every
 * value is bounded and checked here, and anything malformed is skipped, never trusted.
 */
import { XMLParser } from 'fast-xml-parser';

export const DEVGATE_METADATA_URI = 'urn:devgate:1';

export interface DomainDisk {
  readonly alias?: string;
  readonly type: string;
  readonly device: string;
  /** `source/@dev` of a block disk, `source/@file` of a file. */
  readonly source?: string;
  readonly targetDev?: string;
  readonly targetBus?: string;
  readonly readOnly: boolean;
}

export interface DomainHostdev {
  readonly alias?: string;
  readonly type: string;
  readonly vendor?: string;
  readonly product?: string;
  readonly bus?: string;
  readonly device?: string;
  /** A PCI source address (`0x`-hex, as libvirt writes it). */
  readonly domain?: string;
  readonly slot?: string;
  readonly function?: string;
  readonly missing: boolean;
}

/** An `<input>`: `evdev` (source/@dev, grab, grabToggle, repeat) or another type. */
export interface DomainInput {
  readonly alias?: string;
  readonly type: string;
  readonly dev?: string;
  readonly grab?: string;
  readonly grabToggle?: string;
  readonly repeat?: string;
}

/** One devgate attachment as recorded in the domain's metadata. */
export interface MetadataEntry {
  readonly alias: string;
  readonly devclass: string;
  readonly backend: string;
  readonly portId: string;
  readonly deviceId?: string;
  readonly options: Readonly<Record<string, string>>;
}

export interface DomainXml {
  readonly name: string;
  readonly disks: readonly DomainDisk[];
  readonly hostdevs: readonly DomainHostdev[];
  readonly inputs: readonly DomainInput[];
  /** Every alias in the domain's devices (any kind). */
  readonly aliases: ReadonlySet<string>;
  readonly controllers: readonly { readonly type: string; readonly model?: string; readonly index?: string }[];
  readonly metadata: readonly MetadataEntry[];
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  parseAttributeValue: false,
  parseTagValue: false,
  processEntities: true,
  // For character references (`&#10;`): libvirt writes a tab, newline or carriage return in a value
  // so. HTML's entity names come with them; libvirt never writes those.
  htmlEntities: true,
  isArray: (_name, _path, _leaf, isAttribute) => !isAttribute,
});

type Node = Record<string, unknown>;
const MAX = 4096;

function nodes(parent: unknown, name: string): Node[] {
  if (!parent || typeof parent !== 'object') return [];
  const value = (parent as Node)[name];
  return Array.isArray(value) ? value.filter((v): v is Node => !!v && typeof v === 'object') : [];
}

function attr(node: Node | undefined, name: string): string | undefined {
  const value = node?.[`@${name}`];
  return typeof value === 'string' && value.length <= MAX ? value : undefined;
}

const ALIAS = /^[A-Za-z0-9_.-]{1,200}$/;

function aliasOf(node: Node): string | undefined {
  const name = attr(nodes(node, 'alias')[0], 'name');
  return name && ALIAS.test(name) ? name : undefined;
}

/** The parsed live XML; throws only when the text is not a domain's XML at all. */
export function parseDomainXml(xml: string): DomainXml {
  // libvirt never writes a DOCTYPE: one here is not libvirt's, and its entities are not expanded.
  if (/<!DOCTYPE|<!ENTITY/i.test(xml)) throw new Error("a domain XML with a DOCTYPE is not libvirt's");
  if (xml.length > 4 * 1024 * 1024) throw new Error("a domain XML over 4 MiB is not libvirt's");
  const doc = parser.parse(xml) as Node;
  const domain = nodes(doc, 'domain')[0];
  if (!domain) throw new Error('not a libvirt domain XML document');
  const nameNode = (domain.name as unknown[] | undefined)?.[0];
  const name = typeof nameNode === 'string' ? nameNode : '';
  const devices = nodes(domain, 'devices')[0];
  const aliases = new Set<string>();
  for (const [kind, list] of Object.entries(devices ?? {})) {
    if (kind.startsWith('@') || !Array.isArray(list)) continue;
    for (const device of list) {
      const alias = device && typeof device === 'object' ? aliasOf(device as Node) : undefined;
      if (alias) aliases.add(alias);
    }
  }
  const disks = nodes(devices, 'disk').map((disk): DomainDisk => {
    const source = nodes(disk, 'source')[0];
    const target = nodes(disk, 'target')[0];
    return {
      alias: aliasOf(disk),
      type: attr(disk, 'type') ?? 'file',
      device: attr(disk, 'device') ?? 'disk',
      source: attr(source, 'dev') ?? attr(source, 'file'),
      targetDev: attr(target, 'dev'),
      targetBus: attr(target, 'bus'),
      readOnly: nodes(disk, 'readonly').length > 0 || 'readonly' in disk,
    };
  });
  const hostdevs = nodes(devices, 'hostdev').map((hostdev): DomainHostdev => {
    const source = nodes(hostdev, 'source')[0];
    const address = nodes(source, 'address')[0];
    return {
      alias: aliasOf(hostdev),
      type: attr(hostdev, 'type') ?? '',
      vendor: attr(nodes(source, 'vendor')[0], 'id'),
      product: attr(nodes(source, 'product')[0], 'id'),
      bus: attr(address, 'bus'),
      device: attr(address, 'device'),
      ...(attr(address, 'slot') === undefined
        ? {}
        : {
            domain: attr(address, 'domain'),
            slot: attr(address, 'slot'),
            function: attr(address, 'function'),
          }),
      missing: attr(hostdev, 'missing') === 'yes' || attr(source, 'missing') === 'yes',
    };
  });
  const inputs = nodes(devices, 'input').map((input): DomainInput => {
    const source = nodes(input, 'source')[0];
    const optional = (key: string, value: string | undefined) => (value === undefined ? {} : { [key]: value });
    return {
      alias: aliasOf(input),
      type: attr(input, 'type') ?? '',
      ...optional('dev', attr(source, 'dev')),
      ...optional('grab', attr(source, 'grab')),
      ...optional('grabToggle', attr(source, 'grabToggle')),
      ...optional('repeat', attr(source, 'repeat')),
    };
  });
  const controllers = nodes(devices, 'controller').map((c) => ({
    type: attr(c, 'type') ?? '',
    model: attr(c, 'model'),
    index: attr(c, 'index'),
  }));
  return { name, disks, hostdevs, inputs, aliases, controllers, metadata: parseMetadata(nodes(domain, 'metadata')[0]) };
}

/** devgate's entries under `<metadata>`: the element whose namespace is devgate's, whatever its prefix. */
function parseMetadata(metadata: Node | undefined): MetadataEntry[] {
  const entries: MetadataEntry[] = [];
  for (const [key, list] of Object.entries(metadata ?? {})) {
    if (key.startsWith('@') || !Array.isArray(list)) continue;
    for (const element of list as Node[]) {
      if (!element || typeof element !== 'object') continue;
      const prefix = key.includes(':') ? key.slice(0, key.indexOf(':')) : '';
      const ns = attr(element, prefix ? `xmlns:${prefix}` : 'xmlns');
      if (ns !== DEVGATE_METADATA_URI) continue;
      for (const entry of nodes(element, prefix ? `${prefix}:device` : 'device')) {
        const parsed = metadataEntry(entry);
        if (parsed) entries.push(parsed);
      }
    }
  }
  return entries;
}

const FIELD = /^[^\t\n]{1,255}$/;

function metadataEntry(entry: Node): MetadataEntry | undefined {
  const alias = attr(entry, 'alias');
  const devclass = attr(entry, 'class');
  const backend = attr(entry, 'backend');
  const portId = attr(entry, 'port');
  if (!alias || !ALIAS.test(alias) || !devclass || !backend || !portId) return undefined;
  if (![devclass, backend, portId].every((f) => FIELD.test(f))) return undefined;
  const deviceId = attr(entry, 'id');
  const options: Record<string, string> = {};
  try {
    const parsed = JSON.parse(attr(entry, 'options') ?? '{}') as unknown;
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
      for (const [k, v] of Object.entries(parsed)) if (typeof v === 'string' && FIELD.test(k)) options[k] = v;
    }
  } catch {
    // Unreadable options: the attachment is still devgate's, its options are lost.
  }
  return {
    alias,
    devclass,
    backend,
    portId,
    ...(deviceId && FIELD.test(deviceId) ? { deviceId } : {}),
    options,
  };
}

/**
 * Escapes a value for an XML attribute in single or double quotes. Tab, newline and carriage return
 * are character references: written as they are, a parser (libvirt's libxml2) reads them as spaces.
 */
export function xmlEscape(value: string): string {
  return value
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;')
    .replace(/\t/g, '&#9;')
    .replace(/\n/g, '&#10;')
    .replace(/\r/g, '&#13;');
}

/** devgate's metadata element for `virsh metadata --set` (no prefix: libvirt adds its own). */
export function metadataXml(entries: readonly MetadataEntry[]): string {
  const items = entries.map(
    (e) =>
      `<device alias="${xmlEscape(e.alias)}" class="${xmlEscape(e.devclass)}" backend="${xmlEscape(e.backend)}"` +
      ` port="${xmlEscape(e.portId)}"${e.deviceId === undefined ? '' : ` id="${xmlEscape(e.deviceId)}"`}` +
      ` options="${xmlEscape(JSON.stringify(e.options))}"/>`,
  );
  return `<devices>${items.join('')}</devices>`;
}
