import * as path from 'node:path';
import { HostTree } from '@devgate/core';
import { RecordedHostSource } from '@devgate/host';
import { FakeAgent, treeMessageOf } from '@devgate/backend-agent';
import { addDevice, loopStickRecord, recordedFixture } from '@devgate/testkit';
import { checkConfig, type DaemonConfig } from '@devgate/service';
import { type Devgated } from './devgated';
import { ApiClient, cleanupHarness, harnessConfig, makeTempDir, startInProcess, until } from './testing/daemon-harness';

// devgated with a backend VM whose agent is a test double (no guest needed): whatever the agent
// does (malformed, oversized, hostile strings, claims about dom0's devices, fake attachment reports,
// floods, a stalled channel), devgated refuses or bounds it, audits it, and keeps serving its other
// clients, with memory that does not grow with what the agent sends.
jest.setTimeout(60_000);

interface DeviceRow {
  readonly port: string;
  readonly description: string;
  readonly attachment: { readonly frontend: string } | null;
}
interface AuditRow {
  readonly action: string;
  readonly backend?: string;
  readonly outcome: string;
  readonly code?: string;
  readonly reason?: string;
}

const PORTS = { 'org.devgate.export.0': '/nonexistent/e0.sock' };
let dir: string;
let fake: FakeAgent;
let config: DaemonConfig;
let daemon: Devgated;
let api: ApiClient;
let usbDisk: HostTree;

beforeAll(() => {
  usbDisk = new RecordedHostSource(recordedFixture('SHUTTLE_DH170_WITH_USB_DISK.txt'), 'x').snapshot();
});

beforeEach(async () => {
  dir = makeTempDir('devgated-agent-');
  fake = await FakeAgent.listen(path.join(dir, 'agent.sock'));
  // A healthy agent says hello and sends its tree as soon as devgated connects.
  fake.onConnect = (f) => {
    f.hello(Object.keys(PORTS));
    f.tree(usbDisk);
  };
  config = harnessConfig(dir, {
    backends: { dom0: { sysroot: path.join(dir, 'host') }, 'sys-usb': { agent: fake.path, exports: PORTS } },
  });
  // dom0 has one device of its own, which nothing the agent says may touch.
  addDevice(path.join(dir, 'host'), loopStickRecord('loop7', { ID_MODEL: 'HostDisk' }));
  daemon = await startInProcess(config);
  api = new ApiClient(config.socket);
});

afterEach(async () => {
  await daemon?.stop();
  await fake?.close();
});

afterAll(() => cleanupHarness());

const devices = async () => (await api.get<{ devices: DeviceRow[] }>('/v1/devices?all=true')).body.devices;
const agentAudit = async () =>
  (await api.get<{ entries: AuditRow[] }>('/v1/audit?limit=1000&action=agent')).body.entries;
const listedFrom = async (backend: string) => (await devices()).filter((d) => d.port.startsWith(`${backend}:`));

async function wellBehaved(): Promise<void> {
  await until('the agent devices listed', async () =>
    (await listedFrom('sys-usb')).some((d) => d.port === 'sys-usb:sdc1'),
  );
}

async function cutOff(code = 'DG_AGENT_VIOLATION', timeoutMs = 5_000): Promise<AuditRow> {
  let found: AuditRow | undefined;
  await until(
    'a cut-off in the audit',
    async () => {
      found = (await agentAudit()).find((e) => e.outcome === 'denied' && e.code === code);
      return Boolean(found);
    },
    timeoutMs,
  );
  return found!;
}

it("lists a well-behaved agent's devices under the configured name, and audits its connection", async () => {
  await wellBehaved();
  expect((await listedFrom('dom0')).map((d) => d.port)).toEqual(['dom0:loop7']);
  expect(await agentAudit()).toContainEqual(
    expect.objectContaining({ backend: 'sys-usb', outcome: 'ok', reason: expect.stringContaining('connected') }),
  );
});

it.each([
  [
    'claims about a dom0 device',
    (f: FakeAgent) => f.send({ ...treeMessageOf(new HostTree([]), f.nextSeq()), backend: 'dom0' }),
  ],
  [
    'a fake attachment report',
    (f: FakeAgent) => f.send({ v: 1, type: 'attached', port: 'sys-usb:sdc1', frontend: 'work' }),
  ],
  ['a malformed line', (f: FakeAgent) => f.sendRaw('{"v":1,"type":"tree","seq":\n')],
  ['an oversized line', (f: FakeAgent) => f.sendRaw(Buffer.alloc(5 * 1024 * 1024, 'x'))],
])('cuts off an agent that sends %s: audited, its devices gone, dom0 untouched', async (_what, misbehave) => {
  await wellBehaved();
  misbehave(fake);
  const entry = await cutOff();
  expect(entry).toMatchObject({ action: 'agent', backend: 'sys-usb', outcome: 'denied' });
  await until('the agent devices gone', async () => (await listedFrom('sys-usb')).length === 0);
  expect((await listedFrom('dom0')).map((d) => ({ port: d.port, attachment: d.attachment }))).toEqual([
    { port: 'dom0:loop7', attachment: null },
  ]);
  // Nothing was attached anywhere by anything it said.
  expect((await devices()).filter((d) => d.attachment)).toEqual([]);
});

it('lists hostile device strings inert (the same parsers as any backend)', async () => {
  await wellBehaved();
  const records = usbDisk.devices().map((record) => ({
    ...record,
    properties: {
      ...record.properties,
      ...(record.properties.ID_MODEL ? { ID_MODEL: '\u001b[2J\u001b]0;pwned\u0007<b>x</b>\u202e' } : {}),
    },
    attribute: (name: string) => record.attribute(name),
  }));
  fake.tree(new HostTree(records, usbDisk.usage));
  await until('listed', async () => (await listedFrom('sys-usb')).length > 0);
  for (const device of await listedFrom('sys-usb')) {
    // eslint-disable-next-line no-control-regex
    expect(device.description).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/);
  }
});

it('keeps serving other clients through a flood, cuts it off, and its memory stays bounded', async () => {
  await wellBehaved();
  const rssBefore = process.memoryUsage().rss;
  const line = JSON.stringify(treeMessageOf(usbDisk, 0));
  const latencies: number[] = [];
  let flooding = true;
  const flood = (async () => {
    for (let i = 0; flooding && fake.isConnected && i < 5000; i++) {
      if (!fake.sendRaw(line.replace('"seq":0', `"seq":${fake.nextSeq()}`) + '\n')) {
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
  })();
  const probe = (async () => {
    while (flooding) {
      const started = Date.now();
      const health = await api.get('/v1/health', { timeoutMs: 5_000 });
      expect(health.status).toBe(200);
      latencies.push(Date.now() - started);
    }
  })();
  await cutOff('DG_AGENT_VIOLATION', 30_000).finally(() => (flooding = false));
  await Promise.all([flood, probe]);
  latencies.sort((a, b) => a - b);
  // Other clients were answered all along, and not slowly.
  expect(latencies.length).toBeGreaterThan(0);
  expect(latencies[Math.floor(latencies.length * 0.9)]).toBeLessThan(1_000);
  expect(process.memoryUsage().rss - rssBefore).toBeLessThan(200 * 1024 * 1024);
  await until('the agent devices gone', async () => (await listedFrom('sys-usb')).length === 0);
});

it('cuts off a stalled channel; an attach through it fails with a code and nothing waits on it', async () => {
  await wellBehaved();
  fake.autoReply = false;
  const started = Date.now();
  const attach = api.post<{ error?: { code: string } }>('/v1/attach', {
    class: 'block',
    frontend: 'work',
    device: 'sys-usb:sdc1',
  });
  // Meanwhile devgated answers at once.
  const health = await api.get('/v1/health', { timeoutMs: 2_000 });
  expect(health.status).toBe(200);
  const response = await attach;
  expect(response.status).toBeGreaterThanOrEqual(400);
  expect(Date.now() - started).toBeLessThan(30_000);
  // A ping every 5 s, answered within 10 s, or the channel is stalled.
  const entry = await cutOff('DG_AGENT_TIMEOUT', 20_000);
  expect(entry.reason).toContain('stalled');
});

describe('configuration', () => {
  it('takes a backend VM as {"agent": SOCKET, "exports": {PORT: SOCKET}}, and refuses anything else there', () => {
    const ok = checkConfig(
      JSON.stringify({
        backends: { 'sys-usb': { agent: '/run/u/agent.sock', exports: { 'org.devgate.export.0': '/run/u/e0.sock' } } },
      }),
      'devgated.json',
    );
    expect(ok.issues).toEqual([]);
    expect(ok.config?.backends['sys-usb']).toEqual({
      agent: '/run/u/agent.sock',
      exports: { 'org.devgate.export.0': '/run/u/e0.sock' },
    });
    // A relative socket is read beside the configuration file, as every path in it is.
    const relative = checkConfig(
      JSON.stringify({ backends: { 'sys-usb': { agent: 'agent.sock' } } }),
      '/etc/dg/d.json',
    );
    expect(relative.config?.backends['sys-usb']).toEqual({ agent: '/etc/dg/agent.sock', exports: {} });
    for (const bad of [
      { agent: '' },
      { agent: 42 },
      { agent: '/a', exports: { 'x/../y': '/e' } },
      { agent: '/a', backend: 'dom0' },
    ]) {
      const { issues } = checkConfig(JSON.stringify({ backends: { 'sys-usb': bad } }), 'devgated.json');
      expect(issues).toEqual([
        expect.objectContaining({ line: 1, message: expect.stringContaining('{"agent": SOCKET') }),
      ]);
    }
  });
});
