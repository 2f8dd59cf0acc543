import { type AttachSpec } from '@devgate/core';
import { HOSTILE_STRINGS } from '@devgate/testkit';
import { spawnSync } from 'node:child_process';
import { aliasFor, planBlockDisk, planUsbHostdev, portOfAlias } from './libvirt-attach';
import { DEVGATE_METADATA_URI, metadataXml, parseDomainXml, xmlEscape } from './parse-domain-xml';
import { parseEventLine, virshQuote, virshScript } from './virsh-transport';

// A domain's live XML as libvirt 9.0 prints it (trimmed): a devgate disk with its metadata, a disk a
// user attached, a USB host device, and another application's metadata with an element of the same name.
const LIVE = `<domain type='qemu' id='3'>
  <name>win10</name>
  <metadata>
    <other:devices xmlns:other="urn:example:1"><other:device alias="ua-dg-forged" class="block" backend="dom0" port="sda" id="X"/></other:devices>
    <devgate:devices xmlns:devgate="urn:devgate:1">
      <devgate:device alias="${aliasFor({ devclass: 'block', backend: 'dom0', portId: 'loop3p1' })}" class="block" backend="dom0" port="loop3p1" id="0000:0000::?******:3" options="{&quot;read-only&quot;:&quot;no&quot;,&quot;frontend-dev&quot;:&quot;xvdi&quot;}"/>
    </devgate:devices>
  </metadata>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/loop3p1' index='2'/>
      <target dev='sdb' bus='usb' removable='on'/>
      <alias name='${aliasFor({ devclass: 'block', backend: 'dom0', portId: 'loop3p1' })}'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/loop4'/>
      <target dev='sdz' bus='usb'/>
      <readonly/>
      <alias name='usb-disk1'/>
    </disk>
    <hostdev mode='subsystem' type='usb' managed='no'>
      <source startupPolicy='optional' missing='yes'><vendor id='0x0951'/><product id='0x1666'/></source>
      <alias name='hostdev0'/>
    </hostdev>
    <controller type='usb' index='0' model='qemu-xhci'><alias name='usb'/></controller>
  </devices>
</domain>`;

it('reads disks, host devices, aliases and only devgate metadata (by namespace, not by prefix)', () => {
  const xml = parseDomainXml(LIVE);
  expect(xml.name).toBe('win10');
  const ours = aliasFor({ devclass: 'block', backend: 'dom0', portId: 'loop3p1' });
  expect(xml.disks).toEqual([
    {
      alias: ours,
      type: 'block',
      device: 'disk',
      source: '/dev/loop3p1',
      targetDev: 'sdb',
      targetBus: 'usb',
      readOnly: false,
    },
    {
      alias: 'usb-disk1',
      type: 'block',
      device: 'disk',
      source: '/dev/loop4',
      targetDev: 'sdz',
      targetBus: 'usb',
      readOnly: true,
    },
  ]);
  expect(xml.hostdevs).toEqual([
    {
      alias: 'hostdev0',
      type: 'usb',
      vendor: '0x0951',
      product: '0x1666',
      bus: undefined,
      device: undefined,
      missing: true,
    },
  ]);
  expect([...xml.aliases].sort()).toEqual([ours, 'hostdev0', 'usb', 'usb-disk1'].sort());
  expect(xml.metadata).toEqual([
    {
      alias: ours,
      devclass: 'block',
      backend: 'dom0',
      portId: 'loop3p1',
      deviceId: '0000:0000::?******:3',
      options: { 'read-only': 'no', 'frontend-dev': 'xvdi' },
    },
  ]);
});

it('round-trips devgate metadata written by metadataXml, whatever the values hold', () => {
  for (const text of HOSTILE_STRINGS.slice(0, 5)) {
    const entry = {
      alias: aliasFor({ devclass: 'block', backend: 'dom0', portId: 'x' }),
      devclass: 'block',
      backend: 'dom0',
      portId: 'x',
      deviceId: text.replace(/[\t\n]/g, ' ').slice(0, 200),
      options: { 'frontend-dev': text.replace(/[\t\n]/g, ' ').slice(0, 200) },
    };
    const element = metadataXml([entry]).replace('<devices>', `<dg:devices xmlns:dg="${DEVGATE_METADATA_URI}">`);
    const xml = `<domain><name>d</name><metadata>${element.replace(/<device /g, '<dg:device ').replace('</devices>', '</dg:devices>')}</metadata><devices/></domain>`;
    const parsed = parseDomainXml(xml).metadata;
    // Control characters other than tab and newline are not XML: such entries are dropped, never misread.
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/.test(text)) expect(parsed.length).toBeLessThanOrEqual(1);
    else expect(parsed).toEqual([entry]);
  }
});

it('keeps tab, newline and carriage return in values through libvirt (libxml2 reads them raw as spaces)', () => {
  const text = 'by-label/a\tb\nc\rd';
  expect(xmlEscape(text)).toBe('by-label/a&#9;b&#10;c&#13;d');
  const entry = {
    alias: aliasFor({ devclass: 'block', backend: 'dom0', portId: 'x' }),
    devclass: 'block',
    backend: 'dom0',
    portId: 'x',
    deviceId: 'SERIAL\r1',
    options: { 'frontend-dev': text },
  };
  const element = metadataXml([entry])
    .replace('<devices>', `<dg:devices xmlns:dg="${DEVGATE_METADATA_URI}">`)
    .replace(/<device /g, '<dg:device ')
    .replace('</devices>', '</dg:devices>');
  const disk = `<disk type='block'><source dev='${xmlEscape(`/dev/disk/${text}`)}'/></disk>`;
  const written = `<domain><name>d</name><metadata>${element}</metadata><devices>${disk}</devices></domain>`;
  // What libvirt keeps and prints back: parsed and written again by libxml2.
  const run = spawnSync('xmllint', ['-'], { input: written, encoding: 'utf8' });
  if (run.error) throw new Error(`xmllint cannot run here (apt-get install libxml2-utils): ${run.error.message}`);
  const read = parseDomainXml(run.stdout);
  expect(read.metadata).toEqual([entry]);
  expect(read.disks[0]?.source).toBe(`/dev/disk/${text}`);
});

it('survives random and mutated XML: a result or an Error, and never an alias outside libvirt syntax', () => {
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const pieces = [
    '<',
    '>',
    '/',
    "'",
    '"',
    '&',
    '&amp;',
    '<!DOCTYPE x [<!ENTITY a "b">]>',
    '&a;',
    '<alias name="x y"/>',
    '\u0000',
  ];
  for (let i = 0; i < 2_000; i++) {
    const chars = [...LIVE];
    const edits = 1 + Math.floor(random() * 6);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(random() * chars.length);
      if (random() < 0.5) chars.splice(at, Math.floor(random() * 20));
      else chars.splice(at, 0, pieces[Math.floor(random() * pieces.length)]);
    }
    const text = chars.join('');
    let parsed;
    try {
      parsed = parseDomainXml(text);
    } catch (error) {
      expect(error).toBeInstanceOf(Error);
      continue;
    }
    for (const alias of parsed.aliases) expect(alias).toMatch(/^[A-Za-z0-9_.-]{1,200}$/);
    for (const entry of parsed.metadata) expect(entry.alias).toMatch(/^[A-Za-z0-9_.-]{1,200}$/);
  }
});

it('refuses a DOCTYPE (libvirt never writes one; its entities could expand without bound)', () => {
  const bomb = '<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>';
  expect(() => parseDomainXml(`${bomb}<domain><name>&b;</name><devices/></domain>`)).toThrow(/DOCTYPE/);
});

it('makes aliases libvirt keeps (ua-, [A-Za-z0-9_-]) that name the port, and reads only its own back', () => {
  const port = { devclass: 'usb', backend: 'sys-usb', portId: '1-1.4' };
  const alias = aliasFor(port);
  expect(alias).toMatch(/^ua-dg-[A-Za-z0-9_-]+$/);
  expect(portOfAlias(alias)).toEqual(port);
  expect(portOfAlias('usb-disk1')).toBeUndefined();
  expect(portOfAlias('ua-dg-forged')).toBeUndefined();
  // A non-canonical encoding of the same fields is not devgate's.
  expect(portOfAlias(`${alias}=`)).toBeUndefined();
  expect(portOfAlias('ua-dg-' + Buffer.from('block\tdom0\tsda\textra').toString('base64url'))).toBeUndefined();
});

it('writes disk XML with the path escaped and the options Qubes shows', () => {
  const spec: AttachSpec = {
    kind: 'block',
    params: { readOnly: true, devtype: 'disk', bus: 'usb', path: "/dev/disk/by-id/it's<&>" },
    options: { 'read-only': 'yes' },
  };
  const plan = planBlockDisk({ devclass: 'block', backend: 'dom0', portId: 'sdb1' }, spec, 'xvdi', 'sdb');
  expect(plan.xml).toContain(`<source dev='/dev/disk/by-id/it&apos;s&lt;&amp;&gt;'/>`);
  expect(plan.xml).toContain('<readonly/>');
  expect(plan.options).toEqual({ 'read-only': 'yes', 'frontend-dev': 'xvdi' });
  expect(parseDomainXml(`<domain><name>d</name><devices>${plan.xml}</devices></domain>`).disks[0]).toEqual(plan.disk);
  expect(() =>
    planBlockDisk(
      { devclass: 'block', backend: 'dom0', portId: 'x' },
      { ...spec, params: { readOnly: false } },
      'xvdi',
      'sdb',
    ),
  ).toThrow(/absolute host path/);
});

it('addresses USB host devices by vendor/product or by bus and device number, never by a zero id', () => {
  const port = { devclass: 'usb', backend: 'dom0', portId: '1-2' };
  const byId = planUsbHostdev(port, {
    kind: 'usb-host',
    params: { vendorid: 0x951, productid: 0x1666 },
    options: { by: 'id' },
  });
  expect(byId.xml).toContain("<vendor id='0x0951'/><product id='0x1666'/>");
  const byPort = planUsbHostdev(port, { kind: 'usb-host', params: { hostbus: 1, hostport: '2' }, options: {} }, 5);
  expect(byPort.xml).toContain("<address bus='1' device='5'/>");
  expect(() =>
    planUsbHostdev(port, { kind: 'usb-host', params: { vendorid: 0, productid: 1 }, options: {} }),
  ).toThrow();
  expect(() =>
    planUsbHostdev(port, { kind: 'usb-host', params: { hostbus: 1, hostport: '2' }, options: {} }),
  ).toThrow();
});

it('quotes arguments for virsh and parses its event lines', () => {
  expect(virshQuote('win10')).toBe('win10');
  expect(virshQuote("it's ; destroy x")).toBe(`'it'\\''s ; destroy x'`);
  expect(
    virshScript([
      ['dumpxml', 'a b'],
      ['domstate', 'c'],
    ]),
  ).toBe(`dumpxml 'a b' ; domstate c`);
  expect(parseEventLine("2026-12-01 08:15:02.475+0000: event 'device-removed' for domain 'dgtest': ua-dg-x")).toEqual({
    kind: 'device-removed',
    domain: 'dgtest',
    alias: 'ua-dg-x',
  });
  expect(parseEventLine("event 'lifecycle' for domain 'my vm': Stopped Destroyed")).toEqual({
    kind: 'lifecycle',
    domain: 'my vm',
    detail: 'Stopped Destroyed',
  });
  expect(parseEventLine('events received: 3')).toBeUndefined();
  expect(xmlEscape(`<'&">`)).toBe('&lt;&apos;&amp;&quot;&gt;');
});
