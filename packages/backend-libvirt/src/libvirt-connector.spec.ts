import { type AttachSpec, DevgateError, type DomainLifecycleEvent, type Port } from '@devgate/core';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { firstValueFrom, filter, timeout } from 'rxjs';
import { LibvirtConnector, isLocalUri, missingLocalSocket } from './libvirt-connector';
import { aliasFor } from './libvirt-attach';
import { parseDomainXml } from './parse-domain-xml';
import { PrivateLibvirtd, stopAllLibvirtds } from './testing/private-libvirtd';

// The connector against a real libvirtd (private, started here) with two TCG domains, and real
// loop devices as the disks.
jest.setTimeout(120_000);

let libvirtd: PrivateLibvirtd;
let connector: LibvirtConnector;
let disk: LoopDisk;
const events: DomainLifecycleEvent[] = [];

const port = (portId: string): Port => ({ devclass: 'block', backend: 'dom0', portId });
const blockSpec = (node: string, params: Record<string, string | boolean> = {}): AttachSpec => ({
  kind: 'block',
  params: { readOnly: false, devtype: 'disk', bus: 'usb', path: node, ...params },
  options: { 'read-only': params.readOnly === true ? 'yes' : 'no' },
});
const liveXml = async (domain: string) => parseDomainXml(await libvirtd.virsh(['dumpxml', domain]));

beforeAll(async () => {
  libvirtd = await PrivateLibvirtd.start({ tcp: true });
  await libvirtd.startDomain('work');
  await libvirtd.startDomain('personal');
  disk = createLoopDisk({ sizeMiB: 16, partitions: [{ sizeMiB: 6 }, {}] });
  connector = new LibvirtConnector({ uri: libvirtd.uri, pidDir: libvirtd.pidDir });
  connector.lifecycle$.subscribe((e) => events.push(e));
  await connector.ready();
});

afterAll(async () => {
  connector?.dispose();
  await stopAllLibvirtds();
  disposeAllLoopDisks();
});

it('knows the URI convention and which URIs are this host', () => {
  expect(isLocalUri('qemu:///system')).toBe(true);
  expect(isLocalUri('qemu:///system?socket=/tmp/x/libvirt-sock')).toBe(true);
  expect(isLocalUri('qemu+ssh://host/system')).toBe(false);
  expect(isLocalUri('qemu+tcp://127.0.0.1:16509/system')).toBe(false);
  // Without a socket to connect to, nothing is spawned to find out (every CLI command asks).
  const run = fs.mkdtempSync(path.join(libvirtd.dir, 'run-'));
  expect(missingLocalSocket('qemu:///system', run)).toContain('libvirtd is not running');
  fs.writeFileSync(path.join(run, 'virtqemud-sock'), '');
  expect(missingLocalSocket('qemu:///system', run)).toBeUndefined();
  expect(missingLocalSocket('qemu:///system', path.join(run, 'nope'))).toContain('does not exist');
  expect(missingLocalSocket(libvirtd.uri)).toBeUndefined();
  expect(missingLocalSocket(`qemu:///system?socket=${run}/none`)).toBe(`no socket at ${run}/none`);
  expect(missingLocalSocket('qemu+ssh://host/system', run + '/nope')).toBeUndefined();
  expect(missingLocalSocket('qemu:///session', run + '/nope')).toBeUndefined();
});

it('lists every defined domain as a frontend, running from its state', async () => {
  expect([...connector.domains()].sort()).toEqual(['personal', 'work']);
  expect(connector.manages('work')).toBe(true);
  expect(connector.manages('nosuch')).toBe(false);
  expect(await connector.isRunning('work')).toBe(true);
});

it('attaches a partition as a USB disk tagged with its alias and metadata, and reads it back', async () => {
  const part = disk.partitions[0];
  const result = await connector.attach('work', port(part), blockSpec(`/dev/${part}`), 'ID-P1');
  expect(result).toEqual({
    port: port(part),
    frontend: 'work',
    deviceId: 'ID-P1',
    options: { 'read-only': 'no', 'frontend-dev': 'xvdi' },
  });
  // The domain's live XML, read by virsh directly: the disk with devgate's alias, and the metadata.
  const xml = await liveXml('work');
  const attached = xml.disks.find((d) => d.alias === aliasFor(port(part)));
  expect(attached).toMatchObject({ type: 'block', source: `/dev/${part}`, targetBus: 'usb', readOnly: false });
  expect(attached!.alias).toMatch(/^ua-dg-[A-Za-z0-9_-]+$/);
  expect(xml.metadata).toEqual([
    {
      alias: aliasFor(port(part)),
      devclass: 'block',
      backend: 'dom0',
      portId: part,
      deviceId: 'ID-P1',
      options: { 'read-only': 'no', 'frontend-dev': 'xvdi' },
    },
  ]);
  expect(await connector.attachments()).toEqual([result]);
  // QEMU has it too.
  const blocks = await libvirtd.virsh(['qemu-monitor-command', 'work', '{"execute":"query-block"}']);
  expect(blocks).toContain(`/dev/${part}`);
});

it('attaches read-only when asked: <readonly/> in the live XML and a read-only node in QEMU', async () => {
  const part = disk.partitions[1];
  await connector.attach('personal', port(part), blockSpec(`/dev/${part}`, { readOnly: true }), 'ID-P2');
  const xml = await liveXml('personal');
  expect(xml.disks.find((d) => d.alias === aliasFor(port(part)))?.readOnly).toBe(true);
  const blocks = JSON.parse(
    await libvirtd.virsh(['qemu-monitor-command', 'personal', '{"execute":"query-block"}']),
  ) as { return: { inserted?: { file: string; ro: boolean } }[] };
  expect(blocks.return.find((b) => b.inserted?.file === `/dev/${part}`)?.inserted?.ro).toBe(true);
});

it('detaches, confirmed by libvirt: gone from the live XML and from what is read back, no lifecycle event', async () => {
  const part = disk.partitions[1];
  const before = events.length;
  await connector.detach('personal', port(part));
  const xml = await liveXml('personal');
  expect(xml.aliases.has(aliasFor(port(part)))).toBe(false);
  expect((await connector.attachments()).filter((a) => a.frontend === 'personal')).toEqual([]);
  expect(events.slice(before)).toEqual([]);
  await expect(connector.detach('personal', port(part))).rejects.toMatchObject({ code: 'DG_NOT_ATTACHED' });
});

it('shows a disk a user attached with virsh as attached (not by devgate), and never detaches it', async () => {
  const whole = disk.name;
  const file = path.join(libvirtd.dir, 'user-disk.xml');
  fs.writeFileSync(
    file,
    `<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/${whole}'/>` +
      `<target dev='sdz' bus='usb'/><readonly/></disk>`,
  );
  // Heard while the connector runs (libvirt's device-added, then a read of the domain).
  const added = firstValueFrom(
    connector.lifecycle$.pipe(
      filter((e) => e.type === 'device-added' && e.domain === 'personal'),
      timeout(10_000),
    ),
  );
  await libvirtd.virsh(['attach-device', 'personal', file, '--live']);
  expect(await added).toEqual({
    type: 'device-added',
    domain: 'personal',
    attachment: {
      port: port(whole),
      frontend: 'personal',
      options: { 'read-only': 'yes', 'frontend-dev': 'sdz', 'attached-by': 'libvirt' },
    },
  });
  const attachments = await connector.attachments();
  expect(attachments).toContainEqual({
    port: port(whole),
    frontend: 'personal',
    options: { 'read-only': 'yes', 'frontend-dev': 'sdz', 'attached-by': 'libvirt' },
  });
  await expect(connector.detach('personal', port(whole))).rejects.toMatchObject({
    code: 'DG_LIBVIRT_NOT_DEVGATES',
    message: expect.stringContaining('outside devgate'),
  });
  const xml = await liveXml('personal');
  expect(xml.disks.some((d) => d.source === `/dev/${whole}`)).toBe(true);
  // The user detaches it: the connector says the device left the domain.
  const removed = firstValueFrom(
    connector.lifecycle$.pipe(
      filter((e) => e.type === 'device-removed' && e.domain === 'personal'),
      timeout(10_000),
    ),
  );
  await libvirtd.virsh(['detach-device', 'personal', file, '--live']);
  expect(await removed).toEqual({ type: 'device-removed', domain: 'personal', port: port(whole) });
});

it('keeps knowing what devgate attached across a libvirtd restart, and hears events again after it', async () => {
  const part = disk.partitions[0];
  await libvirtd.restart();
  // A fresh connector (as after a devgated restart) and the one that lived through it agree.
  const fresh = new LibvirtConnector({ uri: libvirtd.uri });
  try {
    await fresh.ready();
    const expected = {
      port: port(part),
      frontend: 'work',
      deviceId: 'ID-P1',
      options: { 'read-only': 'no', 'frontend-dev': 'xvdi' },
    };
    expect(await fresh.attachments()).toContainEqual(expected);
    expect(await connector.attachments()).toContainEqual(expected);
  } finally {
    fresh.dispose();
  }
  // The event stream came back: a pause is heard.
  const paused = firstValueFrom(
    connector.lifecycle$.pipe(
      filter((e) => e.type === 'paused' && e.domain === 'work'),
      timeout(15_000),
    ),
  );
  // The respawned event process may still be connecting: suspend until it hears.
  const deadline = Date.now() + 15_000;
  let heard = false;
  void paused.then(
    () => (heard = true),
    () => undefined,
  );
  while (!heard && Date.now() < deadline) {
    await libvirtd.virsh(['suspend', 'work']).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    if (!heard) await libvirtd.virsh(['resume', 'work']).catch(() => undefined);
  }
  await paused;
  await libvirtd.virsh(['resume', 'work']).catch(() => undefined);
});

it('reports virsh destroy as stopped within 1 s of it, and nothing attached there after', async () => {
  const stoppedAt = () =>
    firstValueFrom(
      connector.lifecycle$.pipe(
        filter((e) => e.type === 'stopped' && e.domain === 'work'),
        timeout(15_000),
      ),
    ).then(() => Date.now());
  const stopped = stoppedAt();
  // virsh destroy returns once QEMU is gone (it gives QEMU a few seconds to exit on SIGTERM).
  await libvirtd.virsh(['destroy', 'work']);
  const destroyedAt = Date.now();
  expect((await stopped) - destroyedAt).toBeLessThan(1_000);
  expect(await connector.isRunning('work')).toBe(false);
  expect((await connector.attachments()).filter((a) => a.frontend === 'work')).toEqual([]);
  await expect(
    connector.attach('work', port(disk.partitions[0]), blockSpec(`/dev/${disk.partitions[0]}`), 'X'),
  ).rejects.toMatchObject({ code: 'DG_DOMAIN_NOT_RUNNING' });
  const started = firstValueFrom(
    connector.lifecycle$.pipe(
      filter((e) => e.type === 'started' && e.domain === 'work'),
      timeout(10_000),
    ),
  );
  await libvirtd.virsh(['start', 'work']);
  await started;
});

it('reports a crashed domain (QEMU killed) as stopped within 1 s of the kill', async () => {
  const stopped = firstValueFrom(
    connector.lifecycle$.pipe(
      filter((e) => e.type === 'stopped' && e.domain === 'work'),
      timeout(15_000),
    ),
  ).then(() => Date.now());
  const pid = libvirtd.qemuPid('work');
  expect(pid).toBeGreaterThan(0);
  process.kill(pid!, 'SIGKILL');
  const killedAt = Date.now();
  expect((await stopped) - killedAt).toBeLessThan(1_000);
  expect(await connector.isRunning('work')).toBe(false);
  // libvirt itself takes longer to clean up; start the domain again once it has.
  await libvirtd.waitForState('work', 'shut off');
  await libvirtd.virsh(['start', 'work']);
});

it('attaches on virtio with bus=virtio; a detach the guest never acknowledges is reported, and the disk stays', async () => {
  const part = disk.partitions[1];
  const patient = new LibvirtConnector({ uri: libvirtd.uri, detachTimeoutMs: 1_000 });
  try {
    await patient.ready();
    const result = await patient.attach('personal', port(part), blockSpec(`/dev/${part}`, { bus: 'virtio' }), 'ID-V');
    expect(result.options).toEqual({ 'read-only': 'no', 'frontend-dev': 'xvdi' });
    expect((await liveXml('personal')).disks.find((d) => d.alias === aliasFor(port(part)))).toMatchObject({
      targetBus: 'virtio',
      targetDev: 'vda',
    });
    // No guest OS answers the PCI unplug: libvirt would say "detached successfully"; devgate does not.
    await expect(patient.detach('personal', port(part))).rejects.toMatchObject({ code: 'DG_DETACH_TIMEOUT' });
    expect((await liveXml('personal')).aliases.has(aliasFor(port(part)))).toBe(true);
    expect(await patient.attachments()).toContainEqual(expect.objectContaining({ port: port(part), deviceId: 'ID-V' }));
    // A reset completes the unplug; libvirt's device-removed reaches the connector as a removal.
    const removed = firstValueFrom(
      patient.lifecycle$.pipe(
        filter((e) => e.type === 'device-removed' && e.domain === 'personal'),
        timeout(15_000),
      ),
    );
    await libvirtd.virsh(['qemu-monitor-command', 'personal', '{"execute":"system_reset"}']);
    expect(await removed).toEqual({ type: 'device-removed', domain: 'personal', port: port(part) });
  } finally {
    patient.dispose();
  }
});

it('refuses virtio once the domain has no free PCI slot, saying how to add one', async () => {
  await libvirtd.startDomain('noslot', { rootPorts: 1 });
  try {
    await connector.isRunning('noslot');
    const node = `/dev/${disk.partitions[1]}`;
    // Read-only, the same node can be plugged many times; each virtio disk takes a slot.
    let error: { code: string; message: string; hint?: string } | undefined;
    let attached = 0;
    for (let i = 0; i < 12 && !error; i++) {
      await connector.attach('noslot', port(`slot${i}`), blockSpec(node, { bus: 'virtio', readOnly: true }), 'x').then(
        () => attached++,
        (e: unknown) => (error = e as typeof error),
      );
    }
    expect(error).toMatchObject({ code: 'DG_LIBVIRT_REFUSED', hint: expect.stringContaining('free PCI slot') });
    expect(error!.message).toMatch(/PCI|slot/i);
    expect([...(await liveXml('noslot')).aliases].filter((a) => a.startsWith('ua-dg-'))).toHaveLength(attached);
  } finally {
    await libvirtd.virsh(['destroy', 'noslot']).catch(() => undefined);
    await libvirtd.virsh(['undefine', 'noslot']).catch(() => undefined);
  }
});

it('fails a USB host device that is absent with libvirt reason, and leaves the domain as it was', async () => {
  const usbPort: Port = { devclass: 'usb', backend: 'dom0', portId: '1-1' };
  const spec: AttachSpec = { kind: 'usb-host', params: { vendorid: 0x0951, productid: 0x1666 }, options: { by: 'id' } };
  const error = await connector.attach('personal', usbPort, spec, '0951:1666:X').then(
    () => undefined,
    (e: unknown) => e as { code: string; message: string; hint?: string },
  );
  expect(error).toMatchObject({ code: 'DG_LIBVIRT_REFUSED' });
  // libvirt's own words: no USB bus on this machine, or no such device on one that has it.
  expect(error!.message).toMatch(/cannot open directory '\/sys\/bus\/usb\/devices'|Did not find USB device 0951:1666/);
  expect(error!.hint).toMatch(/plugged into the host/);
  const xml = await liveXml('personal');
  expect(xml.aliases.has(aliasFor(usbPort))).toBe(false);
  expect(xml.metadata).toEqual([]);
});

it('refuses a USB device for a domain without a USB controller, saying how to add one', async () => {
  await libvirtd.startDomain('nousb', { usb: false });
  try {
    const spec: AttachSpec = { kind: 'usb-host', params: { vendorid: 1, productid: 2 }, options: { by: 'id' } };
    await connector.isRunning('nousb');
    await expect(
      connector.attach('nousb', { devclass: 'usb', backend: 'dom0', portId: '1-2' }, spec, 'x'),
    ).rejects.toMatchObject({
      code: 'DG_LIBVIRT_REFUSED',
      message: expect.stringContaining('no USB controller'),
      hint: expect.stringContaining("<controller type='usb'"),
    });
  } finally {
    await libvirtd.virsh(['destroy', 'nousb']).catch(() => undefined);
    await libvirtd.virsh(['undefine', 'nousb']).catch(() => undefined);
  }
});

it("attaches through a remote URI (qemu+tcp to a test-only listener) to that host's domain", async () => {
  const remote = new LibvirtConnector({ uri: libvirtd.tcpUri });
  try {
    await remote.ready();
    expect(remote.domains()).toContain('personal');
    const part = disk.partitions[1];
    await remote.attach('personal', port(part), blockSpec(`/dev/${part}`), 'ID-REMOTE');
    const xml = await liveXml('personal');
    expect(xml.metadata.find((e) => e.portId === part)?.deviceId).toBe('ID-REMOTE');
    expect(await remote.attachments()).toContainEqual(
      expect.objectContaining({ port: port(part), deviceId: 'ID-REMOTE' }),
    );
    await remote.detach('personal', port(part));
    expect((await liveXml('personal')).aliases.has(aliasFor(port(part)))).toBe(false);
  } finally {
    remote.dispose();
  }
});

describe('PCI and input devices, on this host (no IOMMU, no VFIO, no input subsystem) with libvirt 9.0', () => {
  const pciPort: Port = { devclass: 'pci', backend: 'dom0', portId: '00_1f.3' };
  const inputPort: Port = { devclass: 'input', backend: 'dom0', portId: 'usb-kbd' };
  const pciSpec = (options: Record<string, string> = {}): AttachSpec => ({
    kind: 'vfio-pci',
    params: {
      host: '0000:00:1f.3',
      vendorId: '8086',
      deviceId: 'a348',
      ...(options.permissive ? { permissive: true } : {}),
    },
    options,
  });
  const inputSpec = (evdev: string): AttachSpec => ({
    kind: 'input-linux',
    params: {
      events: 'event0,event1',
      devices: '13:64,13:65',
      grabToggle: 'ctrl-ctrl',
      grabAll: true,
      repeat: true,
      evdev,
    },
    options: { 'grab-toggle': 'ctrl-ctrl', 'grab-all': 'yes', repeat: 'yes' },
  });
  /** The devices and devgate's live metadata of a domain, as libvirt shows them. */
  const devicesOf = async (domain: string) => {
    const xml = await liveXml(domain);
    return {
      aliases: [...xml.aliases].sort(),
      disks: xml.disks,
      hostdevs: xml.hostdevs,
      inputs: xml.inputs,
      metadata: xml.metadata.filter((e) => xml.aliases.has(e.alias)),
    };
  };
  const refusal = (promise: Promise<unknown>) =>
    promise.then(
      () => undefined,
      (e: unknown) => e as { code: string; message: string; hint?: string },
    );

  it('PCI: libvirt’s refusal is a coded error naming the domain and the device; nothing is left', async () => {
    const before = await devicesOf('personal');
    const error = await refusal(connector.attach('personal', pciPort, pciSpec(), 'ID-PCI'));
    expect(error).toBeInstanceOf(DevgateError);
    expect(error).toMatchObject({
      code: 'DG_LIBVIRT_REFUSED',
      message: `libvirt refused to attach dom0:00_1f.3 on personal: unsupported configuration: host doesn't support passthrough of host PCI devices`,
      hint: expect.stringContaining('IOMMU'),
    });
    const after = await devicesOf('personal');
    expect(after).toEqual(before);
    expect(after.aliases).not.toContain(aliasFor(pciPort));
    expect((await liveXml('personal')).metadata.map((e) => e.alias)).not.toContain(aliasFor(pciPort));
    expect(await connector.attachments()).not.toContainEqual(expect.objectContaining({ port: pciPort }));
  });

  it('PCI permissive: libvirt’s QEMU driver refuses writeFiltering=no, and says so', async () => {
    const before = await devicesOf('personal');
    const error = await refusal(connector.attach('personal', pciPort, pciSpec({ permissive: 'True' }), 'ID-PCI'));
    expect(error).toMatchObject({
      code: 'DG_LIBVIRT_REFUSED',
      message: expect.stringContaining(
        'attach dom0:00_1f.3 on personal: unsupported configuration: Write filtering of PCI device configuration space is not supported by qemu',
      ),
      hint: expect.stringContaining('Xen'),
    });
    expect(await devicesOf('personal')).toEqual(before);
  });

  it('PCI no-strict-reset: refused before libvirt is asked (libvirt has no form for it)', async () => {
    const before = await devicesOf('personal');
    await expect(
      connector.attach('personal', pciPort, pciSpec({ 'no-strict-reset': 'True' }), 'ID-PCI'),
    ).rejects.toMatchObject({ code: 'DG_UNSUPPORTED_OPTION', message: expect.stringContaining('no-strict-reset') });
    expect(await devicesOf('personal')).toEqual(before);
  });

  it('input: libvirt 9.0 cannot hot-plug an evdev input, even one whose node is missing; nothing is left', async () => {
    // /dev/input does not exist here: libvirt refuses on the bus before it looks at the source.
    expect(fs.existsSync('/dev/input/event0')).toBe(false);
    const before = await devicesOf('personal');
    for (const evdev of ['/dev/input/event0,/dev/input/event1', '/dev/input/event99']) {
      const error = await refusal(connector.attach('personal', inputPort, inputSpec(evdev), 'ID-KBD'));
      expect(error).toBeInstanceOf(DevgateError);
      expect(error).toMatchObject({
        code: 'DG_LIBVIRT_REFUSED',
        message: `libvirt refused to attach dom0:usb-kbd on personal: Operation not supported: input device on bus 'none' cannot be hot plugged.`,
        hint: expect.stringContaining('#529'),
      });
      const after = await devicesOf('personal');
      expect(after).toEqual(before);
      expect(after.aliases.filter((a) => a.startsWith('ua-dg-'))).toEqual(
        before.aliases.filter((a) => a.startsWith('ua-dg-')),
      );
      expect(after.inputs.every((i) => i.type !== 'evdev')).toBe(true);
    }
    await expect(connector.detach('personal', inputPort)).rejects.toMatchObject({ code: 'DG_NOT_ATTACHED' });
  });
});

it('says libvirtd is not reachable, with a hint, when nothing listens', async () => {
  const nowhere = new LibvirtConnector({ uri: `qemu:///system?socket=${libvirtd.dir}/no-such-sock` });
  try {
    await expect(nowhere.ready()).rejects.toMatchObject({
      code: 'DG_LIBVIRT_UNREACHABLE',
      hint: expect.stringContaining('libvirtd running'),
    });
  } finally {
    nowhere.dispose();
  }
});

it("gives input events to a running domain through libvirt's QEMU monitor; QEMU's refusal is a coded error", async () => {
  // A USB VM's mouse, as devgated's input proxy hands it on (libvirt gives every x86 domain PS/2 input).
  await expect(
    connector.injectInput('work', [
      { kind: 'rel', axis: 'x', value: 4 },
      { kind: 'btn', button: 'left', down: true },
      { kind: 'btn', button: 'left', down: false },
      { kind: 'key', key: 'a', down: true },
      { kind: 'key', key: 'a', down: false },
    ]),
  ).resolves.toBeUndefined();
  // A position needs a tablet, which this domain has not.
  await expect(connector.injectInput('work', [{ kind: 'abs', axis: 'x', value: 100 }])).rejects.toMatchObject({
    code: 'DG_LIBVIRT_REFUSED',
    message: expect.stringContaining('event type abs'),
  });
  await expect(connector.injectInput('nosuch', [{ kind: 'rel', axis: 'x', value: 1 }])).rejects.toBeInstanceOf(
    DevgateError,
  );
});
