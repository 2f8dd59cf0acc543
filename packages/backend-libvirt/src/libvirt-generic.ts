/**
 * The generic `libvirt-xml` kind (core's attach-kinds.ts): one device element written by a driver,
 * `{path}` where the host node goes. libvirt reads the element as the domain's owner would have
 * written it, so it is checked before virsh sees it: one element of a kind in the allowlist, no
 * alias (devgate adds its own), no DOCTYPE, processing instruction, comment or entity beyond XML's
 * five, and no host path anywhere but the `{path}` placeholder, which becomes the node the backend's
 * data path found by major:minor.
 */
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { type AttachSpec, DriverContractError, type Port } from '@devgate/core';
import { type DevicePlan, aliasFor } from './libvirt-attach.js';
import { xmlEscape } from './parse-domain-xml.js';

/** Device elements a driver may attach this way. */
export const LIBVIRT_XML_ELEMENTS: readonly string[] = ['serial', 'console', 'channel', 'rng', 'input', 'disk'];

const MAX_XML = 8 * 1024;
const PLACEHOLDER = '{path}';
const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  parseAttributeValue: false,
  parseTagValue: false,
  processEntities: false,
  preserveOrder: true,
});

/** The element, checked, with the node in place of `{path}` and devgate's alias added. */
export function planXmlFragment(port: Port, spec: AttachSpec): DevicePlan {
  const refuse = (reason: string): never => {
    throw new DriverContractError(port.devclass, `libvirt-xml: ${reason}`);
  };
  const xml = spec.params.xml;
  if (typeof xml !== 'string' || xml.length === 0 || xml.length > MAX_XML) refuse('xml must be one device element');
  const fragment = (xml as string).trim();
  if (/<!|<\?/.test(fragment)) refuse('no DOCTYPE, comment, CDATA or processing instruction');
  if (/&(?!(amp|lt|gt|quot|apos);)/.test(fragment)) refuse('no entities but XML’s own');
  if (XMLValidator.validate(fragment) !== true) refuse('not well-formed XML');
  const tree = parser.parse(fragment) as Record<string, unknown>[];
  if (tree.length !== 1) refuse('exactly one element');
  const root = Object.keys(tree[0]).find((key) => key !== ':@')!;
  if (!LIBVIRT_XML_ELEMENTS.includes(root)) refuse(`<${root}> is not one of ${LIBVIRT_XML_ELEMENTS.join(', ')}`);
  let placeholders = 0;
  const walk = (nodes: unknown): void => {
    for (const node of nodes as Record<string, unknown>[]) {
      for (const [key, value] of Object.entries(node)) {
        if (key === ':@') {
          for (const attribute of Object.values(value as Record<string, string>)) check(attribute);
        } else if (key === '#text') check(String(value));
        else {
          if (key === 'alias') refuse('<alias> is devgate’s to add');
          walk(value);
        }
      }
    }
  };
  const check = (text: string) => {
    if (text === PLACEHOLDER) placeholders++;
    else if (text.includes('/') || text.includes(PLACEHOLDER))
      refuse(`'${text.slice(0, 80)}': a host path is only {path}`);
  };
  walk(tree);
  const hostNode = spec.params.hostNode;
  const nodePath = spec.params.path;
  if (hostNode !== undefined) {
    if (placeholders !== 1) refuse('hostNode needs {path} exactly once');
    if (typeof nodePath !== 'string' || !nodePath.startsWith('/') || nodePath.split('/').includes('..')) {
      refuse('the data path gave no path for hostNode');
    }
  } else if (placeholders > 0 || nodePath !== undefined) refuse('{path} needs hostNode');
  const alias = aliasFor(port);
  // A function, not a string: a `$` in the path is text, not a replacement pattern (`$&`, `$$`).
  let filled =
    hostNode === undefined ? fragment : fragment.replace(PLACEHOLDER, () => xmlEscape(nodePath as string));
  // devgate's alias goes last inside the element (a self-closing element is opened for it).
  const selfClosing = new RegExp(`^<${root}([^>]*?)\\s*/>$`);
  filled = selfClosing.test(filled)
    ? filled.replace(selfClosing, `<${root}$1><alias name='${alias}'/></${root}>`)
    : filled.replace(new RegExp(`</${root}\\s*>$`), `<alias name='${alias}'/></${root}>`);
  return { alias, xml: filled, options: { ...spec.options } };
}
