import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { labDown, labUp } from '@devgate/backend-qemu';
import {
  type LoopDisk,
  addDevice,
  createLoopDisk,
  loopStickRecord,
  disposeAllLoopDisks,
  materializeHost,
  removeDevice,
} from '@devgate/testkit';
import { type DaemonConfig, defaultConfig } from '@devgate/service';
import { Devgated } from './devgated';

// devgated end to end: a backend tree that reports hotplug (a stick named like a real loop device,
// so QEMU can open it), a real lab VM, and the API over its Unix sockets.
jest.setTimeout(60_000);

let dir: string;
let sysroot: string;
let disk: LoopDisk;
let daemon: Devgated | undefined;
let config: DaemonConfig;

const stick = (name: string) => loopStickRecord(name, { ID_MODEL: 'Cruzer' });

function api<T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<{ status: number; body: T }> {
  const socketPath = method === 'GET' ? config.socket : `${config.socket}.rw`;
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const request = http.request(
      { socketPath, method, path: route, headers: payload ? { 'content-type': 'application/json' } : {} },
      (response) => {
        let text = '';
        response.on('data', (chunk) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode!, body: JSON.parse(text) as T }));
      },
    );
    request.on('error', reject);
    request.end(payload);
  });
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface DeviceRow {
  port: string;
  attachment: { frontend: string } | null;
}
const deviceOf = async (port: string) =>
  (await api<{ devices: DeviceRow[] }>('GET', '/v1/devices?all=true')).body.devices.find((d) => d.port === port);

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgated-'));
  sysroot = path.join(dir, 'host');
  materializeHost([], sysroot);
  const registry = path.join(dir, 'domains.json');
  await labUp(['work', 'personal'], { registryFile: registry, stateDir: path.join(dir, 'lab') });
  disk = createLoopDisk({ sizeMiB: 8 });
  config = {
    ...defaultConfig(),
    socket: path.join(dir, 'run', 'devgate.sock'),
    stateDir: path.join(dir, 'state'),
    domains: registry,
    backends: { dom0: { sysroot } },
    access: { users: [], groups: [] },
    askTimeoutSeconds: 1,
  };
  daemon = await Devgated.start(config, pino({ level: 'silent' }));
});

afterAll(async () => {
  await daemon?.stop();
  await labDown(undefined, { registryFile: config.domains }).catch(() => undefined);
  disposeAllLoopDisks();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('devgated', () => {
  it('auto-attaches an assigned device when it appears, and again after it is pulled and re-inserted', async () => {
    const port = `dom0:${disk.name}`;
    const assigned = await api('POST', '/v1/assignments', {
      class: 'block',
      frontend: 'work',
      device: port,
      only: 'port',
      mode: 'auto-attach',
    });
    expect(assigned.status).toBe(200);

    addDevice(sysroot, stick(disk.name));
    await until('auto-attach', async () => (await deviceOf(port))?.attachment?.frontend === 'work');

    removeDevice(sysroot, stick(disk.name).devpath);
    await until('removal', async () => (await deviceOf(port)) === undefined);

    addDevice(sysroot, stick(disk.name));
    await until('auto-attach again', async () => (await deviceOf(port))?.attachment?.frontend === 'work');

    const audit = (
      await api<{ entries: { action: string; outcome: string; actor: string }[] }>('GET', '/v1/audit?limit=100')
    ).body.entries;
    expect(audit.filter((e) => e.action === 'auto-attach' && e.outcome === 'ok')).toHaveLength(2);
    expect(audit.some((e) => e.action === 'surprise-removal')).toBe(true);
    expect(audit.find((e) => e.action === 'assign')?.actor).toMatch(/via devgate\.sock\.rw$/);

    await api('POST', '/v1/assignments/remove', { class: 'block', frontend: 'work' });
    await api('POST', '/v1/detach', { class: 'block', frontend: 'work' });
    removeDevice(sysroot, stick(disk.name).devpath);
    await until('cleanup', async () => (await deviceOf(port)) === undefined);
  });

  it('asks for ask-to-attach; an answer resolves it, silence denies it at the timeout', async () => {
    const port = `dom0:${disk.name}`;
    await api('POST', '/v1/assignments', {
      class: 'block',
      frontend: 'work',
      device: port,
      only: 'port',
      mode: 'ask-to-attach',
    });
    addDevice(sysroot, stick(disk.name));
    type AskRow = { id: string; device: string; candidates: string[] };
    let asks: AskRow[] = [];
    await until(
      'an ask',
      async () => (asks = (await api<{ asks: AskRow[] }>('GET', '/v1/asks')).body.asks).length === 1,
    );
    expect(asks[0]).toMatchObject({ device: port, candidates: ['work'] });
    const answered = await api('POST', `/v1/asks/${asks[0].id}/answer`, { verdict: 'allow' });
    expect(answered.status).toBe(200);
    await until('attach after allow', async () => (await deviceOf(port))?.attachment?.frontend === 'work');

    // Unplugged and back: asked again; nobody answers, so it is denied and stays detached.
    removeDevice(sysroot, stick(disk.name).devpath);
    await until('removal', async () => (await deviceOf(port)) === undefined);
    addDevice(sysroot, stick(disk.name));
    await until('a second ask', async () => (await api<{ asks: AskRow[] }>('GET', '/v1/asks')).body.asks.length === 1);
    await until(
      'the timeout',
      async () => (await api<{ asks: AskRow[] }>('GET', '/v1/asks')).body.asks.length === 0,
      3000,
    );
    await new Promise((r) => setTimeout(r, 100));
    expect((await deviceOf(port))?.attachment).toBeNull();
    const audit = (
      await api<{ entries: { action: string; outcome: string; actor: string }[] }>('GET', '/v1/audit?action=answer')
    ).body.entries;
    expect(audit.some((e) => e.outcome === 'ok' && e.actor.endsWith('via devgate.sock.rw'))).toBe(true);
    expect(audit.some((e) => e.outcome === 'denied' && e.actor === 'timeout')).toBe(true);

    await api('POST', '/v1/assignments/remove', { class: 'block', frontend: 'work' });
    removeDevice(sysroot, stick(disk.name).devpath);
  });

  it('says which domains run', async () => {
    const { body } = await api<{ domains: string[]; running: string[] }>('GET', '/v1/domains');
    expect([...body.domains].sort()).toEqual(['dom0', 'personal', 'work']);
    expect([...body.running].sort()).toEqual(['dom0', 'personal', 'work']);
  });

  it('audits every attach, detach and refusal with who, what, when and why', async () => {
    const port = `dom0:${disk.name}`;
    addDevice(sysroot, stick(disk.name));
    await until('the device', async () => (await deviceOf(port)) !== undefined);
    const ok = await api('POST', '/v1/attach', { class: 'block', frontend: 'work', device: port });
    expect(ok.status).toBe(200);
    const refused = await api<{ error: { code: string } }>('POST', '/v1/attach', {
      class: 'block',
      frontend: 'personal',
      device: port,
    });
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe('DG_ALREADY_ATTACHED');
    expect((await api('POST', '/v1/detach', { class: 'block', frontend: 'work', device: port })).status).toBe(200);

    type Entry = {
      at: string;
      actor: string;
      action: string;
      portId: string;
      frontend: string;
      outcome: string;
      code?: string;
      reason?: string;
    };
    const entries = (await api<{ entries: Entry[] }>('GET', '/v1/audit?order=desc&limit=3')).body.entries.reverse();
    expect(entries.map((e) => [e.action, e.frontend, e.outcome, e.code ?? null])).toEqual([
      ['attach', 'work', 'ok', null],
      ['attach', 'personal', 'denied', 'DG_ALREADY_ATTACHED'],
      ['detach', 'work', 'ok', null],
    ]);
    for (const e of entries) {
      expect(e.portId).toBe(disk.name);
      expect(Date.now() - Date.parse(e.at)).toBeLessThan(60_000);
      expect(e.actor).toContain('devgate.sock.rw');
    }
    expect(entries[1].reason).toContain('already attached to work');
    removeDevice(sysroot, stick(disk.name).devpath);
  });
});
