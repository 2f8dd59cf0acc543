import {
  type AttachSpec,
  type DeviceClassDriver,
  type DeviceInfo,
  type DeviceSource,
  DevgateError,
  DriverContractError,
  HostTree,
  INPUT_LINUX_KIND,
  Kernel,
  PLUGIN_API_VERSION,
  type Port,
  recordOf,
} from '@devgate/core';
import { inputAttachSpec } from '@devgate/driver-input';
import { pciAttachSpec } from '@devgate/driver-pci';
import { HOSTILE_STRINGS } from '@devgate/testkit';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BehaviorSubject, Subject, map } from 'rxjs';
import { VFIO_PCI_KIND, aliasFor, partOfAlias, planEvdevInputs, planPciHostdev, portOfAlias } from './libvirt-attach';
import { LibvirtConnector } from './libvirt-connector';
import { labDomainXml } from './libvirt-lab';
import { DEVGATE_METADATA_URI, metadataXml, parseDomainXml } from './parse-domain-xml';
import { type LibvirtEvent, type LibvirtTransport, type VirshResult } from './virsh-transport';

// The PCI (vfio-pci) and input (input-linux) attach kinds on libvirt: the device XML, checked by
// libvirt's own schema, and the connector's attach, read-back and detach against a scripted libvirt
// (the live refusals of libvirt 9.0 are in libvirt-connector.spec.ts).

const pciPort: Port = { devclass: 'pci', backend: 'dom0', portId: '00_14.0' };
const inputPort: Port = { devclass: 'input', backend: 'dom0', portId: 'usb-0000:00:14.0-1' };

const pciDevice = (data: Record<string, string> = {}) =>
  ({
    port: pciPort,
    data: { sbdf: '0000:00:14.0', reset: 'flr', 'vendor-id': '8086', 'device-id': 'a36d', ...data },
  }) as unknown as DeviceInfo;
const inputDevice = (events = ['event3', 'event4'], devices = ['13:67', '13:68']) =>
  ({
    port: inputPort,
    data: { 'event-nodes': events.join(','), 'event-devices': devices.join(',') },
  }) as unknown as DeviceInfo;
/** What the backend's data path adds to the driver's input spec: the checked nodes. */
const filledInput = (spec: AttachSpec, nodes = ['/dev/input/event3', '/dev/input/event4']): AttachSpec => ({
  ...spec,
  params: { ...spec.params, evdev: nodes.join(',') },
});

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dg-libvirt-xml-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** libvirt's own schema check (virt-xml-validate, libvirt-clients) of a domain holding the devices. */
function validate(devices: readonly string[]): { ok: boolean; output: string } {
  const xml = labDomainXml('schema', { lab: false }).replace('</devices>', `${devices.join('\n')}\n  </devices>`);
  const file = path.join(tmp, `domain-${Math.random().toString(36).slice(2)}.xml`);
  fs.writeFileSync(file, xml);
  const run = spawnSync('virt-xml-validate', [file, 'domain'], { encoding: 'utf8' });
  const output = `${run.stdout ?? ''}${run.stderr ?? ''}`;
  // Not a verdict: the tool is missing (virt-xml-validate is in libvirt-clients and runs xmllint).
  if (run.error || /not found|No such file/.test(output)) {
    throw new Error(
      `virt-xml-validate cannot run here (apt-get install libvirt-clients libxml2-utils): ${run.error?.message ?? output}`,
    );
  }
  return { ok: run.status === 0, output };
}

describe('PCI: <hostdev type=pci managed=no>', () => {
  it('is the driver’s vfio-pci spec, by SBDF, with devgate’s alias, and no driver element', () => {
    const spec = pciAttachSpec(pciDevice(), {});
    expect(spec.kind).toBe(VFIO_PCI_KIND);
    const plan = planPciHostdev(pciPort, spec);
    expect(plan.xml).toBe(
      `<hostdev mode='subsystem' type='pci' managed='no'><source>` +
        `<address domain='0x0000' bus='0x00' slot='0x14' function='0x0'/></source>` +
        `<alias name='${aliasFor(pciPort)}'/></hostdev>`,
    );
    expect(plan.alias).toMatch(/^ua-dg-[A-Za-z0-9_-]+$/);
    expect(portOfAlias(plan.alias)).toEqual(pciPort);
    expect(plan.options).toEqual({});
    // What libvirt shows back is read as devgate's.
    const back = parseDomainXml(`<domain><name>w</name><devices>${plan.xml}</devices></domain>`);
    expect(back.hostdevs).toEqual([plan.hostdev]);
    expect(back.aliases).toEqual(new Set([plan.alias]));
  });

  it('maps permissive to libvirt’s writeFiltering=no', () => {
    const plan = planPciHostdev(pciPort, pciAttachSpec(pciDevice({ sbdf: '0001:3a:1f.7' }), { permissive: 'True' }));
    expect(plan.xml).toContain(
      `<source writeFiltering='no'><address domain='0x0001' bus='0x3a' slot='0x1f' function='0x7'/></source>`,
    );
    expect(plan.options).toEqual({ permissive: 'True' });
  });

  it('refuses no-strict-reset with DG_UNSUPPORTED_OPTION: libvirt has no form for it', () => {
    const spec = pciAttachSpec(pciDevice({ reset: 'none' }), { 'no-strict-reset': 'True' });
    expect(() => planPciHostdev(pciPort, spec)).toThrow(
      expect.objectContaining({ code: 'DG_UNSUPPORTED_OPTION', message: expect.stringContaining('no-strict-reset') }),
    );
    expect(() => planPciHostdev(pciPort, { ...spec, options: { other: 'x' } })).toThrow(
      expect.objectContaining({ code: 'DG_UNSUPPORTED_OPTION', message: 'Unsupported option other' }),
    );
  });

  it('takes only a well-formed SBDF: anything else never reaches the XML', () => {
    const bad = [
      '0000:00:14.8',
      '0000:00:20.0',
      '0000:00:14',
      '00:14.0',
      '0000:00:14.0 ',
      "0000:00:14.0' x='y",
      '0000:00:14.0/../',
      '0000:0G:14.0',
      '0000:00:1F.0',
      ...HOSTILE_STRINGS,
    ];
    for (const host of bad) {
      const spec: AttachSpec = { kind: VFIO_PCI_KIND, params: { host }, options: {} };
      expect(() => planPciHostdev(pciPort, spec)).toThrow(DriverContractError);
    }
    expect(() => planPciHostdev(pciPort, { kind: VFIO_PCI_KIND, params: { host: 7 }, options: {} })).toThrow(
      DriverContractError,
    );
  });
});

describe('input: <input type=evdev>, one per event node', () => {
  it('is the driver’s input-linux spec with the data path’s nodes: one element and one alias per node', () => {
    const spec = filledInput(inputAttachSpec(inputDevice(), {}));
    expect(spec.kind).toBe(INPUT_LINUX_KIND);
    const plan = planEvdevInputs(inputPort, spec);
    const parts = [{ alias: plan.alias, xml: plan.xml }, ...(plan.more ?? [])];
    expect(parts.map((p) => p.xml)).toEqual([
      `<input type='evdev'><source dev='/dev/input/event3' grabToggle='ctrl-ctrl' repeat='off'/><alias name='${aliasFor(inputPort)}'/></input>`,
      `<input type='evdev'><source dev='/dev/input/event4' grabToggle='ctrl-ctrl' repeat='off'/><alias name='${aliasFor(inputPort, 1)}'/></input>`,
    ]);
    expect(parts.map((p) => partOfAlias(p.alias))).toEqual([
      { port: inputPort, part: 0 },
      { port: inputPort, part: 1 },
    ]);
    expect(plan.options).toEqual({ 'grab-toggle': 'ctrl-ctrl', 'grab-all': 'no', repeat: 'no' });
    const back = parseDomainXml(
      `<domain><name>w</name><devices>${parts.map((p) => p.xml).join('')}</devices></domain>`,
    );
    expect(back.inputs).toEqual(plan.inputs);
  });

  it('maps grab-all to grab=all, repeat to on/off, and every grab-toggle', () => {
    for (const toggle of ['ctrl-ctrl', 'alt-alt', 'shift-shift', 'meta-meta', 'scrolllock', 'ctrl-scrolllock']) {
      const spec = filledInput(
        inputAttachSpec(inputDevice(['event7'], ['13:71']), {
          'grab-toggle': toggle,
          'grab-all': 'yes',
          repeat: 'yes',
        }),
        ['/dev/input/event7'],
      );
      const plan = planEvdevInputs(inputPort, spec);
      expect(plan.xml).toBe(
        `<input type='evdev'><source dev='/dev/input/event7' grab='all' grabToggle='${toggle}' repeat='on'/>` +
          `<alias name='${aliasFor(inputPort)}'/></input>`,
      );
      expect(plan.more).toEqual([]);
    }
  });

  it('takes only event node paths and known toggles: hostile text never reaches the XML', () => {
    const base = inputAttachSpec(inputDevice(['event3'], ['13:67']), {});
    const badNodes = [
      '',
      'event3',
      '/dev/input/event3x',
      "/dev/input/'/event3",
      '/dev/input/a b/event3',
      '/dev/input/<x>/event3',
      '/dev/input/&amp;/event3',
      '/dev/input/../../etc/event3',
      '/dev/input/event3,/dev/input/event4,', // an empty node
      ...HOSTILE_STRINGS.map((h) => `/dev/input/${h}/event1`).filter((n) => /['"<>&\s,]|\.\./.test(n)),
    ];
    for (const evdev of badNodes) {
      expect(() => planEvdevInputs(inputPort, { ...base, params: { ...base.params, evdev } })).toThrow(
        DriverContractError,
      );
    }
    const tooMany = Array.from({ length: 33 }, (_v, i) => `/dev/input/event${i}`).join(',');
    expect(() => planEvdevInputs(inputPort, { ...base, params: { ...base.params, evdev: tooMany } })).toThrow(
      DriverContractError,
    );
    for (const grabToggle of ['CTRL-CTRL', "ctrl-ctrl' x='", 'none', ...HOSTILE_STRINGS]) {
      const spec = { ...base, params: { ...base.params, evdev: '/dev/input/event3', grabToggle } };
      expect(() => planEvdevInputs(inputPort, spec)).toThrow(DriverContractError);
    }
  });
});

describe('aliases and metadata with hostile ports', () => {
  it('keeps any port text out of the XML (base64url aliases, escaped metadata) and reads it back', () => {
    // (A port text over ~100 bytes makes an alias longer than libvirt's reader here takes: not a case of these kinds.)
    for (const hostile of HOSTILE_STRINGS.filter((h) => h.length > 0 && h.length <= 100 && !/[\t\n]/.test(h))) {
      const pci: Port = { devclass: 'pci', backend: 'dom0', portId: hostile };
      const input: Port = { devclass: 'input', backend: hostile, portId: 'x' };
      const p = planPciHostdev(pci, { kind: VFIO_PCI_KIND, params: { host: '0000:00:14.0' }, options: {} });
      const i = planEvdevInputs(input, {
        kind: INPUT_LINUX_KIND,
        params: { evdev: '/dev/input/event1,/dev/input/event2' },
        options: { 'grab-toggle': hostile },
      });
      const meta = metadataXml([
        { alias: p.alias, devclass: 'pci', backend: 'dom0', portId: hostile, deviceId: hostile, options: {} },
        { alias: i.alias, devclass: 'input', backend: hostile, portId: 'x', options: i.options },
      ]).replace('<devices>', `<devices xmlns="${DEVGATE_METADATA_URI}">`);
      const devices = [p.xml, i.xml, ...(i.more ?? []).map((m) => m.xml)];
      for (const xml of devices) expect(xml).not.toContain(hostile.length > 2 ? hostile : '\u0000never');
      const back = parseDomainXml(
        `<domain><name>w</name><metadata>${meta}</metadata><devices>${devices.join('')}</devices></domain>`,
      );
      expect([...back.aliases].map(portOfAlias)).toEqual([pci, input, input]);
      expect(back.metadata.map((e) => [e.portId, e.backend, e.options])).toEqual([
        [hostile, 'dom0', {}],
        ['x', hostile, { 'grab-toggle': hostile }],
      ]);
    }
  });

  it('reads only canonical part numbers (1 to 31) as devgate’s', () => {
    const encode = (fields: string[]) => 'ua-dg-' + Buffer.from(fields.join('\t')).toString('base64url');
    const f = [inputPort.devclass, inputPort.backend, inputPort.portId];
    expect(partOfAlias(encode([...f, '5']))).toEqual({ port: inputPort, part: 5 });
    for (const index of ['0', '01', '32', '-1', '1.0', ' 1', '', 'a']) {
      expect(partOfAlias(encode([...f, index]))).toBeUndefined();
    }
    expect(partOfAlias(encode([...f, '1', '2']))).toBeUndefined();
  });
});

describe("libvirt's schema (virt-xml-validate) takes the generated devices", () => {
  const pci = (options: Record<string, string>, sbdf = '0000:00:14.0') =>
    planPciHostdev(pciPort, pciAttachSpec(pciDevice({ sbdf, reset: 'flr' }), options)).xml;
  const inputs = (options: Record<string, string>, nodes = ['/dev/input/event3', '/dev/input/event4']) => {
    const events = nodes.map((n) => path.basename(n));
    const plan = planEvdevInputs(
      inputPort,
      filledInput(
        inputAttachSpec(
          inputDevice(
            events,
            events.map((_e, i) => `13:${64 + i}`),
          ),
          options,
        ),
        nodes,
      ),
    );
    return [plan.xml, ...(plan.more ?? []).map((m) => m.xml)];
  };

  it.each([
    ['PCI, no options', () => [pci({})]],
    ['PCI, permissive', () => [pci({ permissive: 'True' }, 'ffff:ff:1f.7')]],
    ['input, defaults, two nodes', () => inputs({})],
    ['input, grab-all, repeat, alt-alt', () => inputs({ 'grab-all': 'yes', repeat: 'yes', 'grab-toggle': 'alt-alt' })],
    [
      'input, scrolllock, no repeat',
      () => inputs({ 'grab-toggle': 'ctrl-scrolllock', repeat: 'no' }, ['/dev/input/event0']),
    ],
    ['PCI and input together', () => [pci({}), ...inputs({ 'grab-toggle': 'meta-meta' })]],
  ])('%s', (_name, devices) => {
    const result = validate(devices());
    expect(result).toEqual({ ok: true, output: expect.stringContaining('validates') });
  });

  it('is a real check: a device libvirt would not take fails it', () => {
    const wrong = inputs({})[0].replace("grabToggle='ctrl-ctrl'", "grabToggle='bogus'");
    expect(validate([wrong])).toEqual({ ok: false, output: expect.stringContaining('fails to validate') });
    const badFunction = pci({}).replace("function='0x0'", "function='0x9'");
    expect(validate([badFunction])).toEqual({ ok: false, output: expect.stringContaining('fails to validate') });
  });
});

/**
 * A scripted libvirt for one running domain: it keeps the devices (by alias) and the metadata, and
 * answers the virsh commands the connector sends; `refuse` makes attach-device of a matching file fail.
 */
class ScriptedLibvirt implements LibvirtTransport {
  readonly uri = 'qemu:///scripted';
  readonly events$ = new Subject<LibvirtEvent>();
  readonly calls: string[][] = [];
  devices: { alias: string; xml: string }[] = [];
  metadata = '';
  refuse?: (xml: string) => string | undefined;

  constructor(devices: string[]) {
    for (const xml of devices) this.devices.push({ alias: /<alias name='([^']+)'/.exec(xml)![1], xml });
  }

  domainXml(): string {
    return (
      `<domain type='qemu' id='1'><name>work</name><metadata>${this.metadata}</metadata>` +
      `<devices>${this.devices.map((d) => d.xml).join('')}</devices></domain>`
    );
  }

  call(commands: readonly (readonly string[])[]): Promise<VirshResult> {
    let stdout = '';
    let stderr = '';
    for (const argv of commands) {
      this.calls.push([...argv]);
      const [cmd, ...args] = argv;
      if (cmd === 'list') stdout += 'work\n';
      else if (cmd === 'echo') stdout += `${args.join(' ')}\n`;
      else if (cmd === 'domstate') stdout += 'running\n';
      else if (cmd === 'dumpxml') stdout += `${this.domainXml()}\n`;
      else if (cmd === 'metadata') {
        this.metadata = args[args.indexOf('--set') + 1]
          .replace('<devices>', `<devgate:devices xmlns:devgate="${DEVGATE_METADATA_URI}">`)
          .replace('</devices>', '</devgate:devices>')
          .replace(/<device /g, '<devgate:device ');
      } else if (cmd === 'attach-device') {
        const xml = fs.readFileSync(args[1], 'utf8');
        const refused = this.refuse?.(xml);
        if (refused) stderr += `error: Failed to attach device from ${args[1]}\nerror: ${refused}\n`;
        else this.devices.push({ alias: /<alias name='([^']+)'/.exec(xml)![1], xml });
      } else if (cmd === 'detach-device-alias') {
        this.devices = this.devices.filter((d) => d.alias !== args[1]);
      } else stderr += `error: unknown command ${cmd}\n`;
    }
    return Promise.resolve({ stdout, stderr, code: 0 });
  }

  dispose(): void {
    this.events$.complete();
  }
}

describe('the connector with PCI and input devices (scripted libvirt)', () => {
  // A user's own devices, which devgate never touches: a PCI hostdev and an evdev input.
  const userPci =
    "<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x00' slot='0x14' function='0x0'/></source><alias name='hostdev0'/></hostdev>";
  const userInput = "<input type='evdev'><source dev='/dev/input/event3'/><alias name='input2'/></input>";

  it('declares both kinds', () => {
    const connector = new LibvirtConnector({ uri: 'qemu:///nowhere', watch: false });
    expect(connector.attachKinds).toEqual(expect.arrayContaining([VFIO_PCI_KIND, INPUT_LINUX_KIND]));
    connector.dispose();
  });

  it('attaches every node, reads one attachment back, and detaches exactly devgate’s aliases', async () => {
    const libvirt = new ScriptedLibvirt([userPci, userInput]);
    const connector = new LibvirtConnector({ uri: libvirt.uri, transport: libvirt, watch: false, local: false });
    try {
      await connector.ready();
      const spec = filledInput(inputAttachSpec(inputDevice(), { 'grab-all': 'yes' }));
      const result = await connector.attach('work', inputPort, spec, 'ID-KBD');
      expect(result).toEqual({
        port: inputPort,
        frontend: 'work',
        deviceId: 'ID-KBD',
        options: { 'grab-toggle': 'ctrl-ctrl', 'grab-all': 'yes', repeat: 'no' },
      });
      const pciResult = await connector.attach('work', pciPort, pciAttachSpec(pciDevice(), {}), 'ID-PCI');
      expect(libvirt.devices.map((d) => d.alias)).toEqual([
        'hostdev0',
        'input2',
        aliasFor(inputPort),
        aliasFor(inputPort, 1),
        aliasFor(pciPort),
      ]);
      // After a devgated restart: a fresh connector reads the same two attachments, one per port.
      const fresh = new LibvirtConnector({ uri: libvirt.uri, transport: libvirt, watch: false, local: false });
      const readBack = await fresh.attachments();
      expect(readBack).toHaveLength(2);
      expect(readBack).toEqual(expect.arrayContaining([result, pciResult]));
      fresh.dispose();
      await connector.detach('work', inputPort);
      const detaches = libvirt.calls.filter((c) => c[0] === 'detach-device-alias').map((c) => c[2]);
      expect(detaches).toEqual([aliasFor(inputPort), aliasFor(inputPort, 1)]);
      await connector.detach('work', pciPort);
      expect(libvirt.devices.map((d) => d.alias)).toEqual(['hostdev0', 'input2']);
      expect(await connector.attachments()).toEqual([]);
      await expect(connector.detach('work', pciPort)).rejects.toMatchObject({ code: 'DG_NOT_ATTACHED' });
      expect(libvirt.calls.filter((c) => c[0] === 'detach-device-alias').map((c) => c[2])).not.toContain('hostdev0');
    } finally {
      connector.dispose();
    }
  });

  it('takes out the nodes that went in when a later one is refused, and says libvirt’s reason', async () => {
    const libvirt = new ScriptedLibvirt([userInput]);
    libvirt.refuse = (xml) =>
      xml.includes('/dev/input/event4') ? "Path '/dev/input/event4' is not accessible" : undefined;
    const connector = new LibvirtConnector({ uri: libvirt.uri, transport: libvirt, watch: false, local: false });
    try {
      await connector.ready();
      const error = await connector
        .attach('work', inputPort, filledInput(inputAttachSpec(inputDevice(), {})), 'ID')
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(error).toBeInstanceOf(DevgateError);
      expect(error).toMatchObject({
        code: 'DG_LIBVIRT_REFUSED',
        message: expect.stringMatching(/work.*event4' is not accessible|attach .*on work/),
      });
      expect((error as Error).message).toContain(`attach ${inputPort.backend}:${inputPort.portId}`);
      expect(libvirt.devices.map((d) => d.alias)).toEqual(['input2']);
      expect(libvirt.calls.filter((c) => c[0] === 'detach-device-alias').map((c) => c[2])).not.toContain('input2');
      expect(parseDomainXml(libvirt.domainXml()).metadata).toEqual([]);
    } finally {
      connector.dispose();
    }
  });
});

describe('the kernel hands both kinds to a libvirt frontend', () => {
  it('attaches a PCI function and an input device through the kernel (no DG_UNSUPPORTED_ATTACH_KIND)', async () => {
    const libvirt = new ScriptedLibvirt([]);
    const connector = new LibvirtConnector({ uri: libvirt.uri, transport: libvirt, watch: false, local: false });
    await connector.ready();
    const kernel = new Kernel();
    const tree = new HostTree([recordOf('/devices/virtual/test/one', 'test', {})]);
    const source: DeviceSource = {
      id: 'test:dom0',
      backend: 'dom0',
      hotplug: 'static',
      trees$: new BehaviorSubject(tree),
      // The data path as host's: the input nodes filled in after checking (here, as listed).
      dataPath: async (_device: DeviceInfo, spec: AttachSpec) =>
        spec.kind === INPUT_LINUX_KIND ? filledInput(spec, ['/dev/input/event3']) : spec,
      dispose() {},
    };
    const driver = (id: string, data: Record<string, string>, attachSpec: DeviceClassDriver['attachSpec']) =>
      ({
        id,
        manifest: { apiVersion: PLUGIN_API_VERSION, description: id },
        discover: (s: DeviceSource) =>
          s.trees$.pipe(
            map((t) =>
              t.devices('test').map((r) => ({
                port: { devclass: id, backend: s.backend, portId: r.devpath.split('/').pop()! },
                deviceId: `${id}-device`,
                interfaces: [],
                data,
              })),
            ),
          ),
        attachSpec,
      }) as DeviceClassDriver;
    kernel.registerSource(source);
    kernel.registerDriver(
      driver('pci', { sbdf: '0000:00:14.0', reset: 'flr', 'vendor-id': '8086', 'device-id': 'a36d' }, pciAttachSpec),
    );
    kernel.registerDriver(driver('input', { 'event-nodes': 'event3', 'event-devices': '13:67' }, inputAttachSpec));
    kernel.registerConnector(connector);
    try {
      const manager = kernel.start();
      const pci = { devclass: 'pci', backend: 'dom0', portId: 'one' };
      const input = { devclass: 'input', backend: 'dom0', portId: 'one' };
      await manager.attach({ frontend: 'work', port: pci });
      await manager.attach({ frontend: 'work', port: input, options: { 'grab-toggle': 'alt-alt' } });
      expect(libvirt.devices.map((d) => d.alias)).toEqual([aliasFor(pci), aliasFor(input)]);
      expect(libvirt.devices[1].xml).toContain(`<source dev='/dev/input/event3' grabToggle='alt-alt' repeat='off'/>`);
      await manager.detach('work', input);
      expect(libvirt.devices.map((d) => d.alias)).toEqual([aliasFor(pci)]);
    } finally {
      kernel.dispose();
      connector.dispose();
    }
  });
});
