import { type Port, libvirtXmlSpec } from '@devgate/core';
import { portOfAlias } from './libvirt-attach';
import { LibvirtConnector } from './libvirt-connector';
import { planXmlFragment } from './libvirt-generic';
import { parseDomainXml } from './parse-domain-xml';

const port: Port = { devclass: 'serial', backend: 'dom0', portId: 'ttyUSB0' };
const SERIAL = "<serial type='dev'><source path='{path}'/><target type='usb-serial'/></serial>";
const filled = (xml: string, path = '/dev/ttyUSB0', node: 'char' | 'none' = 'char') => {
  const hostNode = node === 'none' ? undefined : node;
  const spec = libvirtXmlSpec(xml, hostNode, { model: 'usb-serial' });
  return { ...spec, params: { ...spec.params, ...(hostNode ? { path } : {}) } };
};

describe('the libvirt-xml kind', () => {
  it('is declared by the connector', () => {
    const connector = new LibvirtConnector({ uri: 'qemu:///nowhere', watch: false });
    expect(connector.attachKinds).toEqual(['block', 'usb-host', 'vfio-pci', 'input-linux', 'libvirt-xml']);
    connector.dispose();
  });

  it('puts the node where {path} is, escaped, and devgate’s alias last in the element', () => {
    const plan = planXmlFragment(port, filled(SERIAL, "/dev/tty'x"));
    expect(plan.xml).toBe(
      `<serial type='dev'><source path='/dev/tty&apos;x'/><target type='usb-serial'/><alias name='${plan.alias}'/></serial>`,
    );
    expect(portOfAlias(plan.alias)).toEqual(port);
    expect(plan.options).toEqual({ model: 'usb-serial' });
    // What libvirt would show back: the alias is devgate's, so the read-back finds it.
    const domain = parseDomainXml(`<domain><name>work</name><devices>${plan.xml}</devices></domain>`);
    expect(domain.aliases.has(plan.alias)).toBe(true);
    const self = planXmlFragment(port, filled("<rng model='virtio'/>", '', 'none'));
    expect(self.xml).toBe(`<rng model='virtio'><alias name='${self.alias}'/></rng>`);
  });

  it.each([
    ['a host path written by the driver', "<serial type='dev'><source path='/etc/shadow'/></serial>", /only \{path\}/],
    ['an element outside the allowlist', "<hostdev mode='subsystem'><source path='{path}'/></hostdev>", /not one of/],
    ['two elements', `${SERIAL}${SERIAL}`, /exactly one element|well-formed/],
    ['its own alias', "<serial type='dev'><source path='{path}'/><alias name='ua-x'/></serial>", /alias/],
    ['a DOCTYPE', `<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]>${SERIAL}`, /DOCTYPE/],
    ['an entity', "<serial type='dev'><source path='{path}'/><target type='&e;'/></serial>", /entities/],
    ['malformed XML', "<serial type='dev'><source path='{path}'></serial>", /well-formed/],
  ])('refuses %s', (_what, xml, message) => {
    expect(() => planXmlFragment(port, filled(xml))).toThrow(message);
  });

  it('puts a node path holding `$` as it is (no replacement patterns)', () => {
    for (const node of ['/dev/tty$&x', '/dev/tty$`x', "/dev/tty$'x", '/dev/tty$$x']) {
      const plan = planXmlFragment(port, filled(SERIAL, node));
      const source = /<source path='([^']*)'\/>/.exec(plan.xml)?.[1];
      expect(source).toBe(node.replace(/&/g, '&amp;').replace(/'/g, '&apos;'));
      expect(parseDomainXml(`<domain><name>work</name><devices>${plan.xml}</devices></domain>`).aliases).toEqual(
        new Set([plan.alias]),
      );
    }
  });

  it('refuses {path} that the data path did not fill', () => {
    expect(() => planXmlFragment(port, libvirtXmlSpec(SERIAL, 'char', {}))).toThrow(/no path for hostNode/);
    expect(() => planXmlFragment(port, libvirtXmlSpec(SERIAL, undefined, {}))).toThrow(/needs hostNode/);
  });
});
