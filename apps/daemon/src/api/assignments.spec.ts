/**
 * Assignments through a real devgated (no VM runs: a registry entry is enough for a VM to exist).
 * Qubes' qvm-device assign checks VMNAME first (`no such domain: '<vm>'`): an assignment to a VM
 * nobody knows would wait forever for it, so it is refused as attach refuses it, and audited.
 */
import { type Devgated } from '../devgated.js';
import {
  ApiClient,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  registerVms,
  startInProcess,
} from '../testing/daemon-harness.js';

let daemon: Devgated;
let client: ApiClient;

beforeAll(async () => {
  const config = harnessConfig(makeTempDir('devgated-assign-'));
  registerVms(config, ['work']);
  daemon = await startInProcess(config);
  client = new ApiClient(config.socket);
});

afterAll(() => cleanupHarness());

const assign = (frontend: string) =>
  client.post<{ error?: { code: string; message: string } }>('/v1/assignments', {
    class: 'usb',
    frontend,
    device: 'dom0:1-1:0781_5583_4C530001',
  });

it('refuses an assignment to a VM that does not exist with the 404 attach gives, and audits it', async () => {
  const attach = await client.post('/v1/attach', { class: 'usb', frontend: 'nosuchvm', device: 'dom0:1-1' });
  expect(attach.status).toBe(404);
  const answer = await assign('nosuchvm');
  expect(answer.status).toBe(404);
  expect(answer.body.error).toMatchObject({ code: 'DG_NO_CONNECTOR', message: "no such domain: 'nosuchvm'" });
  expect((attach.body as typeof answer.body).error?.code).toBe('DG_NO_CONNECTOR');
  expect(daemon.store.assignments.list()).toEqual([]);
  expect(daemon.store.audit.query({ action: 'assign' })).toEqual([
    expect.objectContaining({ frontend: 'nosuchvm', outcome: 'denied', code: 'DG_NO_CONNECTOR' }),
  ]);
});

it('assigns to a VM the registry names, running or not', async () => {
  const answer = await assign('work');
  expect(answer.status).toBe(200);
  expect(daemon.store.assignments.list()).toEqual([
    expect.objectContaining({ frontend: 'work', portId: '1-1', deviceId: '0781_5583_4C530001' }),
  ]);
});
