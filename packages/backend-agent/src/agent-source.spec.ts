import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { firstValueFrom, filter, skip, take, timeout } from 'rxjs';
import { type DeviceManager, type HostTree, Kernel, recordOf, HostTree as Tree } from '@devgate/core';
import { RecordedHostSource } from '@devgate/host';
import { blockModule } from '@devgate/driver-block';
import { usbModule } from '@devgate/driver-usb';
import { HOSTILE_STRINGS, UNSAFE_CHARACTERS, allStrings, recordedFixture } from '@devgate/testkit';
import { type AgentIncident, AgentSource } from './agent-source';
import { FakeAgent } from './testing/fake-agent';
import { MAX_DEVPATH_CHARS, MAX_DEVPATH_SEGMENTS } from './protocol';
import { treeMessageOf } from './wire-tree';

// AgentSource against a test double of the agent: what a well-behaved agent gets listed, and what a
// hostile one cannot do. No guest needed; every wait is on an event, with a deadline.
jest.setTimeout(30_000);

const PORTS = { 'org.devgate.export.0': '/nonexistent/e0.sock', 'org.devgate.export.1': '/nonexistent/e1.sock' };
let dir: string;
let fake: FakeAgent;
let kernel: Kernel;
let manager: DeviceManager;
let source: AgentSource;
let incidents: AgentIncident[];
let usbDisk: HostTree;

beforeAll(() => {
  usbDisk = new RecordedHostSource(recordedFixture('SHUTTLE_DH170_WITH_USB_DISK.txt'), 'x').snapshot();
});

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'agent-source-'));
  fake = await FakeAgent.listen(path.join(dir, 'agent.sock'));
  source = new AgentSource({
    backend: 'sys-usb',
    control: fake.path,
    exportPorts: PORTS,
    pingIntervalMs: 200,
    pingTimeoutMs: 500,
    reconnectMinMs: 50,
    cutOffBackoffMs: 60_000,
    limits: { maxTreeBytes: 1024 * 1024, floodMessages: 300, floodWindowMs: 1000, treesPerSecond: 10 },
  });
  incidents = [];
  source.incidents$.subscribe((incident) => incidents.push(incident));
  kernel = new Kernel().load(blockModule, usbModule);
  kernel.registerSource(source);
  manager = kernel.start();
});

afterEach(async () => {
  kernel.dispose();
  await fake.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Resolves when the kernel lists devices of sys-usb that satisfy `test`. */
function listed(test: (ports: string[]) => boolean, timeoutMs = 5_000): Promise<string[]> {
  const now = () =>
    manager.list({ backend: 'sys-usb', includeHidden: true }).map((d) => `${d.port.devclass}:${d.port.portId}`);
  if (test(now())) return Promise.resolve(now());
  return firstValueFrom(
    manager.events$.pipe(
      filter(() => test(now())),
      take(1),
      timeout(timeoutMs),
    ),
  ).then(now);
}

function cutOff(): Promise<AgentIncident> {
  const found = incidents.find((i) => i.type === 'cut-off');
  if (found) return Promise.resolve(found);
  return firstValueFrom(
    source.incidents$.pipe(
      filter((i) => i.type === 'cut-off'),
      take(1),
      timeout(5_000),
    ),
  );
}

async function connectedAgent(): Promise<void> {
  await fake.connection();
  fake.hello(Object.keys(PORTS));
  fake.tree(usbDisk);
  await listed((ports) => ports.includes('block:sdc1'));
}

describe('a well-behaved agent', () => {
  it("has its devices listed under the backend devgate named, by devgate's own drivers", async () => {
    await connectedAgent();
    const devices = manager.list({ backend: 'sys-usb', includeHidden: true });
    expect(devices.map((d) => d.port.backend)).toEqual(devices.map(() => 'sys-usb'));
    const stick = manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc1' })!;
    expect(stick.parent).toEqual({ devclass: 'block', backend: 'sys-usb', portId: 'sdc' });
    // The same devices as the recording read directly: nothing is lost on the wire.
    const direct = new Kernel().load(blockModule, usbModule);
    direct.registerSource(new RecordedHostSource(recordedFixture('SHUTTLE_DH170_WITH_USB_DISK.txt'), 'sys-usb'));
    const reference = direct.start();
    const strip = (m: DeviceManager) =>
      m
        .list({ includeHidden: true })
        .map((d) => JSON.stringify(d))
        .sort();
    expect(strip(manager)).toEqual(strip(reference));
    direct.dispose();
    expect(source.connected).toBe(true);
    expect(incidents).toContainEqual({ type: 'connected', backend: 'sys-usb', agent: 'fake-agent 0' });
  });

  it('is pinged, and its devices go when it hangs up; it comes back when it reconnects', async () => {
    await connectedAgent();
    await fake.waitForRequest('ping');
    fake.hangUp();
    await listed((ports) => ports.length === 0);
    expect(incidents.some((i) => i.type === 'disconnected')).toBe(true);
    await fake.connection(false);
    fake.hello(Object.keys(PORTS));
    fake.tree(usbDisk);
    await listed((ports) => ports.includes('block:sdc1'));
  });

  it('is asked for an NBD export on a free port, and the frontend is told where to connect', async () => {
    await connectedAgent();
    const stick = manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc1' })!;
    const spec = await source.dataPath(stick, { kind: 'block', params: { readOnly: true }, options: {} });
    const request = await fake.waitForRequest('export');
    expect(request).toMatchObject({
      op: 'export',
      export: {
        kind: 'nbd',
        devname: 'sdc1',
        majorMinor: stick.data['major-minor'],
        readOnly: true,
        port: 'org.devgate.export.0',
      },
    });
    expect(spec.params).toMatchObject({ readOnly: true, nbdSocket: PORTS['org.devgate.export.0'] });
    expect(spec.params.nbdExport).toBe((request as { export: { id: string } }).export.id);
    // The next export takes the other port; a third finds none free.
    const disk = manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc' })!;
    const second = await source.dataPath(disk, { kind: 'block', params: {}, options: {} });
    expect(second.params.nbdSocket).toBe(PORTS['org.devgate.export.1']);
    await expect(source.dataPath(disk, { kind: 'block', params: {}, options: {} })).rejects.toMatchObject({
      code: 'DG_NO_FREE_EXPORT_PORT',
    });
    // An export that ended frees its port.
    fake.send({ v: 1, type: 'export-ended', export: spec.params.nbdExport, reason: 'frontend left', clean: true });
    await firstValueFrom(
      source.incidents$.pipe(
        filter((i) => i.type === 'export-ended'),
        take(1),
        timeout(5_000),
      ),
    );
    const third = await source.dataPath(disk, { kind: 'block', params: {}, options: {} });
    expect(third.params.nbdSocket).toBe(PORTS['org.devgate.export.0']);
  });

  it('is asked for its hello when it does not say it (its session outlived a quick reconnect)', async () => {
    await fake.connection();
    const asked = await fake.waitForRequest('hello', 5_000);
    fake.hello(Object.keys(PORTS));
    fake.tree(usbDisk);
    await listed((ports) => ports.includes('block:sdc1'));
    // The spontaneous hello and the asked-for one may both come: the second is no violation.
    fake.hello(Object.keys(PORTS));
    fake.reply(asked.id, true);
    fake.tree(usbDisk);
    await fake.waitForRequest('ping');
    expect(incidents.filter((i) => i.type === 'cut-off')).toEqual([]);
  });

  describe('gets back the ports its hello said were busy once their exports end', () => {
    const BLOCK = { kind: 'block', params: {}, options: {} } as const;
    const [PORT0, PORT1] = ['org.devgate.export.0', 'org.devgate.export.1'] as const;
    const ALL = [PORT0, PORT1];
    const disk = () => manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc' })!;

    /** Ends an export devgated does not know; it asks which ports are busy, and the agent answers. */
    async function foreignExportEnds(id: string, stillBusy: string[]): Promise<void> {
      const asked = fake.nextRequest('hello');
      fake.send({ v: 1, type: 'export-ended', export: id, reason: 'the frontend left', clean: true });
      await asked;
      // As the agent answers (the fake replied already): its hello, then its tree. The tree applied,
      // the hello before it was read.
      const applied = firstValueFrom(source.trees$.pipe(skip(1), take(1), timeout(5_000)));
      fake.hello(ALL, undefined, stillBusy);
      fake.tree(usbDisk);
      await applied;
    }

    it('made before devgated connected; not one devgated exports on, whatever the agent says', async () => {
      await fake.connection();
      fake.hello(ALL, undefined, [PORT0]);
      fake.tree(usbDisk);
      await listed((ports) => ports.includes('block:sdc1'));
      expect((await source.dataPath(disk(), BLOCK)).params.nbdSocket).toBe(PORTS[PORT1]);
      await expect(source.dataPath(disk(), BLOCK)).rejects.toMatchObject({ code: 'DG_NO_FREE_EXPORT_PORT' });
      // An export that ended with its port still listed busy (a second one on it): the port stays out.
      await foreignExportEnds('eold000000001', [PORT0, PORT1]);
      await expect(source.dataPath(disk(), BLOCK)).rejects.toMatchObject({ code: 'DG_NO_FREE_EXPORT_PORT' });
      // The agent leaves out the port of devgated's own live export too: only the foreign one is freed.
      await foreignExportEnds('eold000000002', []);
      expect((await source.dataPath(disk(), BLOCK)).params.nbdSocket).toBe(PORTS[PORT0]);
      await expect(source.dataPath(disk(), BLOCK)).rejects.toMatchObject({ code: 'DG_NO_FREE_EXPORT_PORT' });
      expect(incidents.filter((i) => i.type === 'cut-off')).toEqual([]);
    });

    it('made by devgated before it reconnected', async () => {
      await connectedAgent();
      const before = await source.dataPath(disk(), BLOCK);
      expect(before.params.nbdSocket).toBe(PORTS[PORT0]);
      fake.hangUp();
      await listed((ports) => ports.length === 0);
      await fake.connection(false);
      // The export went on in the agent: its port is busy.
      fake.hello(ALL, undefined, [PORT0]);
      fake.tree(usbDisk);
      await listed((ports) => ports.includes('block:sdc1'));
      expect((await source.dataPath(disk(), BLOCK)).params.nbdSocket).toBe(PORTS[PORT1]);
      await foreignExportEnds(String(before.params.nbdExport), [PORT1]);
      expect((await source.dataPath(disk(), BLOCK)).params.nbdSocket).toBe(PORTS[PORT0]);
      expect(incidents.filter((i) => i.type === 'cut-off')).toEqual([]);
    });
  });

  it("refuses an export the agent fails, with the agent's reason made inert", async () => {
    await connectedAgent();
    fake.autoReply = false;
    const stick = manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc1' })!;
    const attempt = source.dataPath(stick, { kind: 'block', params: {}, options: {} });
    const request = await fake.waitForRequest('export');
    fake.reply(request.id, false, { code: 'EXPORT_FAILED', message: '\u001b[31mqemu-nbd\u0007 died' });
    const error = (await attempt.catch((e: unknown) => e)) as Error;
    expect(error).toMatchObject({ code: 'DG_AGENT_REFUSED' });
    expect(error.message).not.toMatch(UNSAFE_CHARACTERS);
    expect(error.message).toContain('qemu-nbd died');
  });

  it('reports a device the agent finds in use at hand-over as in use, as the host does', async () => {
    await connectedAgent();
    fake.autoReply = false;
    const stick = manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc1' })!;
    const attempt = source.dataPath(stick, { kind: 'block', params: {}, options: {} });
    const request = await fake.waitForRequest('export');
    fake.reply(request.id, false, { code: 'DEVICE_IN_USE', message: 'mounted' });
    await expect(attempt).rejects.toMatchObject({
      code: 'DG_DEVICE_IN_USE',
      message: 'Device sys-usb:sdc1 is in use in its backend (mounted)',
    });
  });
});

describe('a hostile agent', () => {
  const violations: [string, (fake: FakeAgent) => void][] = [
    ['a line that is not JSON', (f) => f.sendRaw('{"v":1,"type":"tree",\n')],
    [
      'another protocol version',
      (f) => f.send({ v: 2, type: 'tree', seq: f.nextSeq(), records: [], usage: { mounted: [], swaps: [] } }),
    ],
    ['an unknown message type', (f) => f.send({ v: 1, type: 'exec', argv: ['rm', '-rf', '/'] })],
    [
      'a claim about a dom0 device',
      (f) =>
        f.send({
          v: 1,
          type: 'tree',
          seq: f.nextSeq(),
          backend: 'dom0',
          records: [],
          usage: { mounted: [], swaps: [] },
        }),
    ],
    ['a fake attachment report', (f) => f.send({ v: 1, type: 'attached', port: 'dom0:sda', frontend: 'work' })],
    [
      'an attachment smuggled into a record',
      (f) =>
        f.send({
          v: 1,
          type: 'tree',
          seq: f.nextSeq(),
          records: [{ devpath: '/devices/x', subsystem: 'block', properties: {}, attachment: { frontend: 'work' } }],
          usage: { mounted: [], swaps: [] },
        }),
    ],
    [
      'a device path that climbs out of /devices',
      (f) =>
        f.send({
          v: 1,
          type: 'tree',
          seq: f.nextSeq(),
          records: [{ devpath: '/devices/../../etc/shadow', subsystem: 'block', properties: {} }],
          usage: { mounted: [], swaps: [] },
        }),
    ],
    [
      'an attribute no driver reads',
      (f) =>
        f.send({
          v: 1,
          type: 'tree',
          seq: f.nextSeq(),
          records: [
            { devpath: '/devices/x', subsystem: 'block', properties: {}, attributes: { '../../../etc/passwd': 'x' } },
          ],
          usage: { mounted: [], swaps: [] },
        }),
    ],
    // What froze devgated for seconds per tree (a parent looked up segment by segment) before the bounds.
    [
      'a device path deeper than any real one',
      (f) =>
        f.send({
          ...treeMessageOf(new Tree([recordOf(`/devices/x${'/a'.repeat(MAX_DEVPATH_SEGMENTS)}/sda`, 'block', {})]), 0),
          seq: f.nextSeq(),
        }),
    ],
    [
      'a device path longer than any real one',
      (f) =>
        f.send({
          ...treeMessageOf(new Tree([recordOf(`/devices/${'x'.repeat(MAX_DEVPATH_CHARS)}/sda`, 'block', {})]), 0),
          seq: f.nextSeq(),
        }),
    ],
    ['a reply to a request never made', (f) => f.reply(999_999, true)],
    ['a second hello', (f) => f.hello([])],
    ['a tree older than the last one', (f) => f.send({ ...treeMessageOf(new Tree([]), 0) })],
    [
      'a NUL in a property',
      (f) => f.send({ ...treeMessageOf(new Tree([recordOf('/devices/x', 'block', { A: 'a\u0000b' })]), f.nextSeq()) }),
    ],
  ];

  it.each(violations)('sending %s is cut off: its devices go, and it is reported', async (_what, misbehave) => {
    await connectedAgent();
    misbehave(fake);
    const incident = await cutOff();
    expect(incident).toMatchObject({ type: 'cut-off', backend: 'sys-usb', code: 'DG_AGENT_VIOLATION' });
    await listed((ports) => ports.length === 0);
    await fake.closedByHost();
    // Cut off means cut off: nothing it asks is done meanwhile.
    const stick = usbDisk.devices('block')[0];
    expect(stick).toBeDefined();
    await expect(
      source.dataPath(
        { port: { devclass: 'block', backend: 'sys-usb', portId: 'sdc1' }, deviceId: 'x', interfaces: [], data: {} },
        { kind: 'block', params: {}, options: {} },
      ),
    ).rejects.toMatchObject({ code: 'DG_AGENT_UNAVAILABLE' });
    expect(manager.list({ backend: 'dom0' })).toEqual([]);
  });

  it('an oversized line is cut off at the bound, before it is kept whole', async () => {
    await connectedAgent();
    const chunk = Buffer.alloc(64 * 1024, 'a');
    for (let sent = 0; sent <= 1024 * 1024 && fake.isConnected; sent += chunk.length) fake.sendRaw(chunk);
    expect(await cutOff()).toMatchObject({ reason: expect.stringContaining('longer than 1048576 bytes') });
  });

  it('hostile device strings are listed inert and bounded', async () => {
    await fake.connection();
    fake.hello([]);
    const records = usbDisk.devices().map((record, i) => {
      // A NUL cannot come from sysfs or a uevent (C strings): the protocol refuses it outright (above).
      const payload = HOSTILE_STRINGS[i % HOSTILE_STRINGS.length].replaceAll('\u0000', '').slice(0, 16_000);
      const properties: Record<string, string> = { ...record.properties };
      for (const key of ['ID_MODEL', 'ID_VENDOR', 'ID_FS_LABEL', 'ID_SERIAL_SHORT', 'ID_SERIAL']) {
        if (key in properties) properties[key] = payload;
      }
      return { ...record, properties, attribute: (name: string) => record.attribute(name) };
    });
    fake.tree(new Tree(records, usbDisk.usage));
    await listed((ports) => ports.includes('block:sdc1'));
    for (const [at, text] of allStrings(manager.list({ backend: 'sys-usb', includeHidden: true }))) {
      expect([at, text]).toEqual([at, expect.not.stringMatching(UNSAFE_CHARACTERS)]);
      expect(text.length).toBeLessThanOrEqual(4096);
    }
  });

  it('a flood of trees is coalesced, then cut off; memory stays bounded', async () => {
    await connectedAgent();
    const applied: number[] = [];
    const subscription = source.trees$.subscribe((tree) => applied.push(tree.size));
    const heapBefore = process.memoryUsage().heapUsed;
    const small = new Tree(
      usbDisk
        .devices()
        .filter((r) => r.subsystem === 'usb')
        .slice(0, 10),
    );
    const line = JSON.stringify(treeMessageOf(small, 0));
    for (let i = 0; i < 400 && fake.isConnected; i++) {
      fake.sendRaw(line.replace('"seq":0', `"seq":${fake.nextSeq()}`) + '\n');
    }
    expect(await cutOff()).toMatchObject({ reason: expect.stringContaining('flood') });
    subscription.unsubscribe();
    // At most treesPerSecond (10) a second were applied, not 400.
    expect(applied.length).toBeLessThan(20);
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(64 * 1024 * 1024);
  });

  it('a stalled channel (no answer to pings) is cut off, and the kernel goes on', async () => {
    await connectedAgent();
    fake.autoReply = false;
    const incident = await cutOff();
    expect(incident).toMatchObject({ code: 'DG_AGENT_TIMEOUT', reason: expect.stringContaining('stalled') });
    await listed((ports) => ports.length === 0);
  });

  it('an export request it never answers times out; other work does not wait for it', async () => {
    await connectedAgent();
    fake.autoReply = false;
    const stick = manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc1' })!;
    const started = Date.now();
    const attempt = source.dataPath(stick, { kind: 'block', params: {}, options: {} });
    // Meanwhile listing answers at once.
    expect(manager.list({ backend: 'sys-usb' }).length).toBeGreaterThan(0);
    await expect(attempt).rejects.toMatchObject({ code: expect.stringMatching(/DG_AGENT_(TIMEOUT|VIOLATION)/) });
    expect(Date.now() - started).toBeLessThan(25_000);
  });

  it('junk before the hello is skipped, within a bound', async () => {
    await fake.connection();
    fake.sendRaw('\u0000\u0001garbage from an earlier session\n');
    fake.hello(Object.keys(PORTS));
    fake.tree(usbDisk);
    await listed((ports) => ports.includes('block:sdc1'));
    expect(incidents.filter((i) => i.type === 'cut-off')).toEqual([]);
  });

  it('endless junk instead of a hello is cut off', async () => {
    await fake.connection();
    // One stale write (up to a tree's bound) may come first; more than that is not an agent starting up.
    const junk = 'x'.repeat(64 * 1024) + '\n';
    for (let i = 0; i < 40 && fake.isConnected; i++) fake.sendRaw(junk);
    expect(await cutOff()).toMatchObject({ reason: expect.stringContaining('before its hello') });
  });
});
