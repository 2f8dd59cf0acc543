import * as fs from 'node:fs';
import * as path from 'node:path';
import { labDown, labUp, readRegistrySync } from '@devgate/backend-qemu';
import { type LoopDisk, addDevice, createLoopDisk, disposeAllLoopDisks, loopStickRecord } from '@devgate/testkit';
import { type DaemonConfig } from '@devgate/service';
import {
  ApiClient,
  type Lab,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  startInProcess,
  startLab,
  until,
} from './testing/daemon-harness';

// A frontend that stops ends its attachments, as a surprise removal does: real lab VMs (QEMU) are
// killed under devgated, a real loop device is the stick.
jest.setTimeout(60_000);

interface DeviceRow {
  readonly port: string;
  readonly attachment: { readonly frontend: string } | null;
}
interface AuditRow {
  readonly action: string;
  readonly frontend?: string;
  readonly outcome: string;
  readonly reason?: string;
}

let dir: string;
let lab: Lab;
let disk: LoopDisk;
let config: DaemonConfig;
let api: ApiClient;

beforeAll(async () => {
  dir = makeTempDir();
  lab = await startLab(dir, ['work', 'personal']);
  disk = createLoopDisk({ sizeMiB: 8 });
  config = harnessConfig(dir, { domains: lab.registryFile });
  addDevice(path.join(dir, 'host'), loopStickRecord(disk.name, { ID_MODEL: 'Cruzer' }));
  api = new ApiClient(config.socket);
});

afterAll(async () => {
  await cleanupHarness();
  await lab?.stop();
  disposeAllLoopDisks();
});

const stick = () => `dom0:${disk.name}`;
const holder = async () =>
  (await api.get<{ devices: DeviceRow[] }>('/v1/devices?all=true')).body.devices.find((d) => d.port === stick())
    ?.attachment?.frontend;
const audit = async () =>
  (await api.get<{ entries: AuditRow[] }>('/v1/audit?limit=1000')).body.entries.filter(
    (e) => e.action === 'attachment-ended',
  );

/** Kills a lab VM's QEMU the hard way, as a crash would. */
function killVm(name: string): void {
  const pid = readRegistrySync(lab.registryFile).domains[name]?.pid;
  expect(pid).toBeGreaterThan(0);
  process.kill(pid!, 'SIGKILL');
}

/** Starts a killed lab VM again: unregisters the dead one, starts a new QEMU under the same name. */
async function restartVm(name: string): Promise<void> {
  await labDown([name], { registryFile: lab.registryFile });
  await labUp([name], { registryFile: lab.registryFile, stateDir: path.join(dir, 'lab') });
}

it('frees the device of a killed VM within 1 s, audits why, lets another VM take it, and re-attaches on restart', async () => {
  let daemon = await startInProcess(config);
  const assigned = await api.post('/v1/assignments', {
    class: 'block',
    frontend: 'work',
    device: stick(),
    mode: 'auto-attach',
  });
  expect(assigned.status).toBe(200);
  await until('auto-attach to work', async () => (await holder()) === 'work');

  killVm('work');
  const killedAt = Date.now();
  await until('the device listed free', async () => (await holder()) === undefined, 1_000);
  expect(Date.now() - killedAt).toBeLessThan(1_000);
  expect(await audit()).toEqual([
    expect.objectContaining({ frontend: 'work', outcome: 'ok', reason: expect.stringContaining('work stopped') }),
  ]);

  // Not stuck: another VM can have it, and give it back.
  expect((await api.post('/v1/attach', { class: 'block', frontend: 'personal', device: stick() })).status).toBe(200);
  expect(await holder()).toBe('personal');
  expect((await api.post('/v1/detach', { class: 'block', frontend: 'personal', device: stick() })).status).toBe(200);

  // The VM starts again: its auto-attach assignment applies again.
  await restartVm('work');
  await until('re-attached to work', async () => (await holder()) === 'work', 10_000);

  // The same across a devgated restart while the VM is down.
  killVm('work');
  await until('free again', async () => (await holder()) === undefined, 1_000);
  await daemon.stop();
  daemon = await startInProcess(config);
  expect(await holder()).toBeUndefined();
  await restartVm('work');
  await until('re-attached after the restart', async () => (await holder()) === 'work', 10_000);
  await daemon.stop();
});

it('a VM whose QEMU is gone at devgated start shows nothing attached to it', async () => {
  // The journal and QEMU agree: nothing in a dead VM is listed as attached.
  const daemon = await startInProcess(config);
  await until('attached to work', async () => (await holder()) === 'work', 10_000);
  await daemon.stop();
  killVm('work');
  const restarted = await startInProcess(config);
  expect(await holder()).toBeUndefined();
  expect(fs.existsSync(config.socket)).toBe(true);
  await restarted.stop();
});
