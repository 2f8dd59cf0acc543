/**
 * Deny lists and remembered answers through a real devgated: the routes on both sockets, the audit
 * row of every change (written in the change's own transaction, and streamed), hostile bodies that
 * must change nothing, and the deny list doing its job: a pattern added through the API makes a
 * manual attach of a real loop device to a real (paused) QEMU VM fail with DG_POLICY_DENIED, and
 * removing it lets the same attach through.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type LoopDisk, createLoopDisk } from '@devgate/testkit';
import { type DenyListChangeJson, type DenyListJson, type RememberedAnswerJson } from '@devgate/client';
import { type Devgated } from '../devgated.js';
import { type DaemonEvent, DaemonEvents, SqliteStateStore } from '@devgate/service';
import {
  ApiClient,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  request,
  startInProcess,
  startLab,
  until,
} from '../testing/daemon-harness.js';
import { PolicyStateService, answerId } from '../services/policy-state-service.js';
import { MAX_PATTERNS } from './policy-routes.js';

jest.setTimeout(60_000);

interface ErrorBody {
  error: { code: string; message: string };
}
interface AuditBody {
  entries: { action: string; actor: string; frontend?: string; outcome: string; reason?: string; details?: unknown }[];
}

let daemon: Devgated;
let client: ApiClient;
let disk: LoopDisk;
const events: DaemonEvent[] = [];

beforeAll(async () => {
  const dir = makeTempDir('devgated-policy-');
  const { registryFile } = await startLab(dir, ['work']);
  disk = createLoopDisk({ sizeMiB: 8 });
  // The real host's devices (dom0 reads /sys), so that the loop device is there to attach.
  const config = harnessConfig(dir, { backends: { dom0: { source: 'local' } }, domains: registryFile });
  daemon = await startInProcess(config);
  daemon.events.events$.subscribe((event) => events.push(event));
  client = new ApiClient(config.socket);
  await until('the loop device is listed', () =>
    daemon.manager.list().some((d) => d.port.devclass === 'block' && d.port.portId === disk.name),
  );
});

afterAll(() => cleanupHarness());

const post = <T = DenyListChangeJson>(route: string, body: unknown, actor = 'uid=1000(alice)') =>
  client.post<T>(route, body, { headers: { 'x-devgate-actor': actor } });

async function auditOf(action: string): Promise<AuditBody['entries']> {
  const answer = await client.get<AuditBody>(`/v1/audit?action=${action}&order=asc&limit=10000`);
  expect(answer.status).toBe(200);
  return answer.body.entries;
}

/** Everything the routes could change: deny lists, remembered answers and the audit log. */
async function snapshot() {
  return {
    deny: (await client.get('/v1/deny')).body,
    answers: (await client.get('/v1/answers')).body,
    audit: (await client.get<AuditBody>('/v1/audit?limit=10000')).body.entries.length,
  };
}

describe('deny lists', () => {
  it('are read on both sockets and changed only on the read-write one', async () => {
    for (const socket of [client.socket, client.rwSocket]) {
      expect((await request(socket, 'GET', '/v1/deny')).status).toBe(200);
      expect((await request<{ denyList: DenyListJson }>(socket, 'GET', '/v1/deny/work')).body).toEqual({
        denyList: { frontend: 'work', patterns: [] },
      });
    }
    for (const op of ['add', 'remove', 'replace']) {
      const refused = await request<ErrorBody>(client.socket, 'POST', `/v1/deny/work/${op}`, { patterns: ['u03****'] });
      expect({ op, status: refused.status, code: refused.body.error.code }).toEqual({
        op,
        status: 404,
        code: 'DG_API_NOT_FOUND',
      });
    }
    expect((await client.get('/v1/deny/work')).body).toEqual({ denyList: { frontend: 'work', patterns: [] } });
  });

  it('add, remove and replace patterns, say what changed, and audit each change as one event', async () => {
    const before = (await auditOf('deny-list')).length;
    const streamed = events.length;

    const added = await post('/v1/deny/work/add', { patterns: ['u03****', 'u0e****'] });
    expect(added.status).toBe(200);
    expect(added.body).toEqual({
      denyList: { frontend: 'work', patterns: ['u03****', 'u0e****'] },
      added: ['u03****', 'u0e****'],
      removed: [],
    });
    // Adding what is there already changes nothing (and says so).
    expect((await post('/v1/deny/work/add', { patterns: ['u03****', 'p0c03**'] })).body).toEqual({
      denyList: { frontend: 'work', patterns: ['p0c03**', 'u03****', 'u0e****'] },
      added: ['p0c03**'],
      removed: [],
    });
    // Removing an unknown pattern is ignored, as Qubes' denied.Remove does.
    expect((await post('/v1/deny/work/remove', { patterns: ['u0e****', 'm******'] })).body).toEqual({
      denyList: { frontend: 'work', patterns: ['p0c03**', 'u03****'] },
      added: [],
      removed: ['u0e****'],
    });
    expect((await post('/v1/deny/personal/replace', { patterns: ['b******'] })).body).toEqual({
      denyList: { frontend: 'personal', patterns: ['b******'] },
      added: ['b******'],
      removed: [],
    });
    expect((await post('/v1/deny/work/replace', { patterns: ['u03**01', 'p0c03**'] })).body).toEqual({
      denyList: { frontend: 'work', patterns: ['p0c03**', 'u03**01'] },
      added: ['u03**01'],
      removed: ['u03****'],
    });
    expect((await client.get('/v1/deny')).body).toEqual({
      denyLists: [
        { frontend: 'personal', patterns: ['b******'] },
        { frontend: 'work', patterns: ['p0c03**', 'u03**01'] },
      ],
    });
    // Replacing with nothing clears the list.
    expect((await post('/v1/deny/personal/replace', { patterns: [] })).body).toEqual({
      denyList: { frontend: 'personal', patterns: [] },
      added: [],
      removed: ['b******'],
    });
    expect((await client.get('/v1/deny')).body).toEqual({
      denyLists: [{ frontend: 'work', patterns: ['p0c03**', 'u03**01'] }],
    });

    const audit = (await auditOf('deny-list')).slice(before);
    expect(audit.map((e) => [e.frontend, e.outcome, e.reason])).toEqual([
      ['work', 'ok', 'add: added u03**** u0e****'],
      ['work', 'ok', 'add: added p0c03**'],
      ['work', 'ok', 'remove: removed u0e****'],
      ['personal', 'ok', 'replace: added b******'],
      ['work', 'ok', 'replace: added u03**01; removed u03****'],
      ['personal', 'ok', 'replace: removed b******'],
    ]);
    expect(audit[0].actor).toBe('uid=1000(alice) via devgate.sock.rw');
    expect(audit[4].details).toEqual({
      op: 'replace',
      requested: ['u03**01', 'p0c03**'],
      added: ['u03**01'],
      removed: ['u03****'],
      patterns: ['p0c03**', 'u03**01'],
    });
    const streamedAudit = events
      .slice(streamed)
      .flatMap((e) => (e.type === 'audit' && e.entry.action === 'deny-list' ? [e.entry.reason] : []));
    expect(streamedAudit).toEqual(audit.map((e) => e.reason));

    await post('/v1/deny/work/replace', { patterns: [] });
  });

  it('refuse hostile requests with coded 4xx errors and change nothing', async () => {
    await post('/v1/deny/work/replace', { patterns: ['u03****'] });
    const before = await snapshot();
    const badPatterns: unknown[] = [
      'u03***', // six characters
      'u03*****', // eight
      'U03****', // upper case
      'x03****', // no such class letter
      'u0g****', // not hex
      'u03 ***',
      'u03****\n',
      '\u0000u03***',
      'ü03****',
      '',
      '%',
      7,
      null,
      true,
      ['u03****'],
      { pattern: 'u03****' },
    ];
    const bodies: [string, unknown][] = [
      ...badPatterns.flatMap((p): [string, unknown][] => [
        ['add', { patterns: [p] }],
        ['remove', { patterns: ['u03****', p] }],
        ['replace', { patterns: [p] }],
      ]),
      ['add', { patterns: [] }], // adding or removing nothing is a mistake
      ['remove', { patterns: [] }],
      ['add', { patterns: ['u03****', 'u03****'] }], // Qubes: "Duplicated device interfaces in payload."
      ['replace', { patterns: ['b******', 'b******'] }],
      ['add', {}],
      ['add', { patterns: 'u03****' }],
      ['add', { patterns: ['b******'], frontend: 'personal' }], // unknown field
      ['replace', { patterns: [], all: true }],
      ['add', [{ patterns: ['b******'] }]],
      ['add', 'b******'],
      ['add', null],
      [
        'replace',
        { patterns: Array.from({ length: MAX_PATTERNS + 1 }, (_, i) => `u${i.toString(16).padStart(6, '0')}`) },
      ],
    ];
    for (const [op, body] of bodies) {
      const answer = await post<ErrorBody>(`/v1/deny/work/${op}`, body);
      expect({ op, body, status: answer.status, code: answer.body?.error?.code }).toEqual({
        op,
        body,
        status: 400,
        code: 'DG_API_BAD_REQUEST',
      });
    }
    // Bad frontends in the path, on reads and writes.
    for (const frontend of ['1work', 'w'.repeat(32), 'wo%20rk', 'work%00', '..', 'a:b', '*', '%C3%A9']) {
      const read = await client.get<ErrorBody>(`/v1/deny/${frontend}`);
      const write = await post<ErrorBody>(`/v1/deny/${frontend}/add`, { patterns: ['b******'] });
      for (const answer of [read, write]) {
        expect({ frontend, status: answer.status, code: answer.body?.error?.code }).toEqual({
          frontend,
          status: 400,
          code: 'DG_API_BAD_REQUEST',
        });
      }
    }
    const tooLong = await client.get<ErrorBody>(`/v1/deny/${'w'.repeat(300)}`);
    expect([tooLong.status, tooLong.body.error.code]).toEqual([414, 'DG_API_BAD_REQUEST']);
    // Unknown query fields, a body over 64 KiB, a body that is not JSON.
    expect((await client.get<ErrorBody>('/v1/deny?frontend=work')).status).toBe(400);
    expect((await client.get<ErrorBody>('/v1/deny/work?all=true')).status).toBe(400);
    const huge = await post<ErrorBody>('/v1/deny/work/add', { patterns: ['b******'], pad: 'x'.repeat(70_000) });
    expect([huge.status, huge.body.error.code]).toEqual([413, 'DG_API_TOO_LARGE']);
    const notJson = await client.post<ErrorBody>('/v1/deny/work/add', undefined, {
      rawBody: '{"patterns": ["b******"',
      headers: { 'content-type': 'application/json' },
    });
    expect([notJson.status, notJson.body.error.code]).toEqual([400, 'DG_API_BAD_REQUEST']);

    expect(await snapshot()).toEqual(before);
    await post('/v1/deny/work/replace', { patterns: [] });
  });

  it('stops a manual attach of a matching device with DG_POLICY_DENIED; removing the pattern lets it through', async () => {
    const attach = () =>
      client.post<ErrorBody>('/v1/attach', { class: 'block', frontend: 'work', device: `dom0:${disk.name}` });
    // A pattern that does not match (HID) does not stop a block device.
    await post('/v1/deny/work/add', { patterns: ['u03****'] });
    // Block devices expose b******: this one matches.
    expect((await post('/v1/deny/work/add', { patterns: ['b******'] })).status).toBe(200);
    const denied = await attach();
    expect(denied.status).toBe(403);
    expect(denied.body.error.code).toBe('DG_POLICY_DENIED');
    expect(denied.body.error.message).toContain("work's deny list");
    expect(daemon.manager.get({ devclass: 'block', backend: 'dom0', portId: disk.name })?.attachment).toBeFalsy();
    const refusal = (await auditOf('attach')).at(-1)!;
    expect(refusal).toMatchObject({ frontend: 'work', outcome: 'denied', code: 'DG_POLICY_DENIED' });

    expect((await post('/v1/deny/work/remove', { patterns: ['b******'] })).body.removed).toEqual(['b******']);
    const allowed = await attach();
    expect(allowed.status).toBe(200);
    expect(daemon.manager.get({ devclass: 'block', backend: 'dom0', portId: disk.name })?.attachment?.frontend).toBe(
      'work',
    );
    const detached = await client.post('/v1/detach', {
      class: 'block',
      frontend: 'work',
      device: `dom0:${disk.name}`,
    });
    expect(detached.status).toBe(200);
    await post('/v1/deny/work/replace', { patterns: [] });
  });
});

describe('remembered answers', () => {
  const remember = (frontend: string, devclass: string, deviceId: string, verdict: 'allow' | 'deny' = 'allow') =>
    daemon.store.answers.remember({ devclass, backend: 'dom0', portId: '*', deviceId, frontend, verdict });

  beforeEach(() => {
    daemon.store.answers.forgetAll();
    remember('work', 'block', 'disk-a');
    remember('work', 'usb', '1d6b:0002:serial:u090000', 'deny');
    remember('personal', 'block', 'disk-b');
  });

  it('are listed on both sockets, filtered by frontend and class, each with a stable id', async () => {
    for (const socket of [client.socket, client.rwSocket]) {
      const all = await request<{ answers: RememberedAnswerJson[] }>(socket, 'GET', '/v1/answers');
      expect(all.status).toBe(200);
      expect(all.body.answers.map((a) => [a.frontend, a.devclass, a.deviceId, a.verdict])).toEqual([
        ['personal', 'block', 'disk-b', 'allow'],
        ['work', 'block', 'disk-a', 'allow'],
        ['work', 'usb', '1d6b:0002:serial:u090000', 'deny'],
      ]);
      for (const answer of all.body.answers) {
        expect(answer.id).toMatch(/^[0-9a-f]{12}$/);
        expect(answer.id).toBe(answerId(answer));
        expect(answer.portId).toBe('*');
      }
    }
    const work = (await client.get<{ answers: RememberedAnswerJson[] }>('/v1/answers?frontend=work')).body.answers;
    expect(work.map((a) => a.deviceId)).toEqual(['disk-a', '1d6b:0002:serial:u090000']);
    const block = (await client.get<{ answers: RememberedAnswerJson[] }>('/v1/answers?class=block&frontend=work')).body
      .answers;
    expect(block.map((a) => a.deviceId)).toEqual(['disk-a']);
    // Remembering the same scope again replaces the answer and keeps its id.
    const id = block[0].id;
    remember('work', 'block', 'disk-a', 'deny');
    const again = (await client.get<{ answers: RememberedAnswerJson[] }>('/v1/answers?class=block&frontend=work')).body
      .answers;
    expect(again).toMatchObject([{ id, verdict: 'deny' }]);
  });

  it('are forgotten one by id, by frontend, by class, or all, each audited', async () => {
    const ids = (await client.get<{ answers: RememberedAnswerJson[] }>('/v1/answers')).body.answers.map((a) => a.id);
    const before = (await auditOf('answer')).length;
    type Forgotten = { forgotten: RememberedAnswerJson[] };

    const one = await post<Forgotten>('/v1/answers/forget', { id: ids[1] });
    expect(one.status).toBe(200);
    expect(one.body.forgotten.map((a) => a.deviceId)).toEqual(['disk-a']);
    const missing = await post<ErrorBody>('/v1/answers/forget', { id: ids[1] });
    expect([missing.status, missing.body.error.code]).toEqual([404, 'DG_ANSWER_NOT_FOUND']);

    const byClass = await post<Forgotten>('/v1/answers/forget', { class: 'usb' });
    expect(byClass.body.forgotten.map((a) => a.deviceId)).toEqual(['1d6b:0002:serial:u090000']);
    // Nothing matches: nothing forgotten, nothing audited.
    expect((await post<Forgotten>('/v1/answers/forget', { frontend: 'work' })).body.forgotten).toEqual([]);
    const byFrontend = await post<Forgotten>('/v1/answers/forget', { frontend: 'personal', class: 'block' });
    expect(byFrontend.body.forgotten.map((a) => a.deviceId)).toEqual(['disk-b']);
    expect((await client.get('/v1/answers')).body).toEqual({ answers: [] });

    remember('work', 'block', 'disk-a');
    remember('personal', 'usb', 'usb-c');
    const all = await post<Forgotten>('/v1/answers/forget', { all: true });
    expect(all.body.forgotten.map((a) => a.deviceId).sort()).toEqual(['disk-a', 'usb-c']);
    expect((await client.get('/v1/answers')).body).toEqual({ answers: [] });

    const audit = (await auditOf('answer')).slice(before);
    expect(audit.map((e) => [e.frontend, e.outcome, e.reason])).toEqual([
      ['work', 'ok', "forgot the remembered answer 'allow'"],
      ['work', 'ok', "forgot the remembered answer 'deny'"],
      ['personal', 'ok', "forgot the remembered answer 'allow'"],
      ['personal', 'ok', "forgot the remembered answer 'allow'"],
      ['work', 'ok', "forgot the remembered answer 'allow'"],
    ]);
    expect(audit[0]).toMatchObject({
      actor: 'uid=1000(alice) via devgate.sock.rw',
      details: { op: 'forget', id: ids[1] },
    });
  });

  it('refuse forget requests without exactly one scope, and hostile ones, changing nothing', async () => {
    const before = await snapshot();
    const id = answerId({ devclass: 'block', backend: 'dom0', portId: '*', deviceId: 'disk-a', frontend: 'work' });
    const bodies: unknown[] = [
      {}, // forgetting everything must be asked for
      { all: false },
      { all: 'true' },
      { all: 1 },
      { all: true, frontend: 'work' },
      { all: true, id },
      { id, frontend: 'work' },
      { id, class: 'block' },
      { id: id.toUpperCase() },
      { id: id.slice(1) },
      { id: `${id}0` },
      { frontend: '1work' },
      { frontend: 'work', unknown: 1 },
      { class: 'Block' },
      { class: 'block', frontend: null },
      { frontend: 'w'.repeat(32) },
      [{ all: true }],
      'all',
      null,
    ];
    for (const body of bodies) {
      const answer = await post<ErrorBody>('/v1/answers/forget', body);
      expect({ body, status: answer.status, code: answer.body?.error?.code }).toEqual({
        body,
        status: 400,
        code: 'DG_API_BAD_REQUEST',
      });
    }
    const readOnly = await request<ErrorBody>(client.socket, 'POST', '/v1/answers/forget', { all: true });
    expect([readOnly.status, readOnly.body.error.code]).toEqual([404, 'DG_API_NOT_FOUND']);
    for (const query of ['frontend=1work', 'class=BLOCK', 'verdict=allow', 'frontend=work&frontend=personal']) {
      expect({ query, status: (await client.get(`/v1/answers?${query}`)).status }).toEqual({ query, status: 400 });
    }
    expect(await snapshot()).toEqual(before);
  });
});

describe('PolicyStateService', () => {
  it('writes a change and its audit row in one transaction: when the audit fails, nothing changed', () => {
    const dir = makeTempDir('devgated-policy-tx-');
    const store = new SqliteStateStore(path.join(dir, 'state.db'));
    try {
      const service = new PolicyStateService(store, new DaemonEvents());
      service.changeDenyList('add', 'work', ['u03****'], 'test');
      store.answers.remember({
        devclass: 'block',
        backend: 'dom0',
        portId: '*',
        deviceId: 'disk-a',
        frontend: 'work',
        verdict: 'allow',
      });
      const append = store.audit.append.bind(store.audit);
      const spy = jest.spyOn(store.audit, 'append').mockImplementation((entry) => {
        if (entry.outcome === 'ok') throw new Error('disk full');
        return append(entry);
      });
      expect(() => service.changeDenyList('replace', 'work', ['b******'], 'test')).toThrow('disk full');
      expect(() => service.forgetAnswers({ all: true }, 'test')).toThrow('disk full');
      spy.mockRestore();
      expect(store.denyLists.get('work').patterns).toEqual(['u03****']);
      expect(store.answers.list().map((a) => a.deviceId)).toEqual(['disk-a']);
      // The failed change is audited as such.
      expect(store.audit.query({ action: 'deny-list' }).map((e) => e.outcome)).toEqual(['ok', 'error']);
    } finally {
      store.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
