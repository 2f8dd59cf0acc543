import { type DaemonConfig } from '@devgate/service';
import { REMOVED_DOMAIN_ACTOR, RemovedDomains } from './services/removed-domains';
import {
  ApiClient,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  registerVms,
  startInProcess,
  until,
} from './testing/daemon-harness';

// A VM taken out of the domain registry takes its assignments and remembered answers with it, as
// qvm-remove does: a new VM given its name later must not inherit them. Real devgated, real SQLite,
// the QEMU connector's own poll of the registry.
jest.setTimeout(30_000);

interface AssignmentRow {
  readonly frontend: string;
  readonly devclass: string;
}
interface AuditRow {
  readonly action: string;
  readonly actor: string;
  readonly frontend?: string;
}

let config: DaemonConfig;
let api: ApiClient;

beforeEach(() => {
  config = harnessConfig(makeTempDir());
  registerVms(config, ['work', 'personal']);
  api = new ApiClient(config.socket);
});

afterEach(() => cleanupHarness());

const assignments = async () =>
  (await api.get<{ assignments: AssignmentRow[] }>('/v1/assignments')).body.assignments.map(
    (a) => `${a.devclass}:${a.frontend}`,
  );

async function assign(devclass: string, device: string, frontend: string): Promise<void> {
  // By port: no device is plugged in this test's host.
  const body = { class: devclass, device, frontend, mode: 'auto-attach', only: 'port' };
  expect((await api.post('/v1/assignments', body)).status).toBe(200);
}

it("drops a removed VM's assignments and remembered answers, audited, and keeps the others'", async () => {
  const daemon = await startInProcess(config);
  await assign('block', 'dom0:sdb', 'work');
  await assign('usb', 'dom0:1-1', 'work');
  await assign('usb', 'dom0:1-1', 'personal');
  const answer = { devclass: 'input', backend: 'dom0', portId: '1-2', deviceId: '*', verdict: 'allow' } as const;
  daemon.store.answers.remember({ ...answer, frontend: 'work' });
  daemon.store.answers.remember({ ...answer, frontend: 'personal' });
  expect(await assignments()).toEqual(['block:work', 'usb:personal', 'usb:work']);

  registerVms(config, ['personal']);
  await until('work forgotten', async () => (await assignments()).length === 1, 10_000);
  expect(await assignments()).toEqual(['usb:personal']);
  expect(daemon.store.answers.list({}).map((a) => a.frontend)).toEqual(['personal']);
  const entries = (await api.get<{ entries: AuditRow[] }>('/v1/audit?limit=100')).body.entries.filter(
    (e) => e.actor === REMOVED_DOMAIN_ACTOR,
  );
  expect(entries.map((e) => `${e.action}:${e.frontend}`).sort()).toEqual([
    'answer:work',
    'unassign:work',
    'unassign:work',
  ]);
});

it('drops nothing of a VM a hypervisor connector still manages', async () => {
  const daemon = await startInProcess(config);
  await assign('usb', 'dom0:1-1', 'work');
  // A word that 'work' is gone from one connector (libvirt's Undefined) while the registry still
  // names a VM of that name: that VM keeps its assignments.
  const removed = new RemovedDomains(daemon.manager, daemon.store, daemon.events, daemon.devices, () => undefined);
  removed.forget('work');
  expect(await assignments()).toEqual(['usb:work']);
  registerVms(config, ['personal']);
  await until('work gone from the registry', () => !daemon.manager.connectors.some((c) => c.manages('work')));
  removed.forget('work');
  expect(await assignments()).toEqual([]);
});
