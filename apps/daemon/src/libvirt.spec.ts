import * as fs from 'node:fs';
import * as path from 'node:path';
import { aliasFor, parseDomainXml } from '@devgate/backend-libvirt';
import { PrivateLibvirtd, stopAllLibvirtds } from '@devgate/backend-libvirt/testing';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { type DaemonConfig } from '@devgate/service';
import { type Devgated } from './devgated';
import { ApiClient, cleanupHarness, harnessConfig, makeTempDir, startInProcess, until } from './testing/daemon-harness';

// devgated with libvirt domains: a private libvirtd (started here, nothing written outside its temp
// dir) with TCG domains, this host as dom0, and a real loop device with two partitions as the stick.
jest.setTimeout(180_000);

interface DeviceRow {
  readonly port: string;
  readonly attachment: { readonly frontend: string; readonly options: Record<string, string> } | null;
}
interface ErrorBody {
  readonly error: { readonly code: string; readonly message: string; readonly hint?: string };
}
interface AuditRow {
  readonly action: string;
  readonly frontend?: string;
  readonly portId?: string;
  readonly outcome: string;
  readonly reason?: string;
}

const DOMAINS = ['work', 'personal', 'vm3', 'vm4', 'vm5'];
let libvirtd: PrivateLibvirtd;
let disk: LoopDisk;
let config: DaemonConfig;
let api: ApiClient;
let daemon: Devgated | undefined;

beforeAll(async () => {
  libvirtd = await PrivateLibvirtd.start();
  for (const name of DOMAINS) await libvirtd.startDomain(name);
  disk = createLoopDisk({ sizeMiB: 16, partitions: [{ sizeMiB: 6 }, {}] });
  const dir = makeTempDir('devgated-libvirt-');
  config = harnessConfig(dir, { backends: { dom0: { source: 'local' } }, libvirt: { uris: [libvirtd.uri] } });
  api = new ApiClient(config.socket);
});

afterAll(async () => {
  await cleanupHarness();
  await stopAllLibvirtds();
  disposeAllLoopDisks();
});

const dev = (name: string) => `dom0:${name}`;
const port = (name: string) => ({ devclass: 'block', backend: 'dom0', portId: name });
const devices = async () => (await api.get<{ devices: DeviceRow[] }>('/v1/devices?all=true')).body.devices;
const holder = async (name: string) => (await devices()).find((d) => d.port === dev(name))?.attachment?.frontend;
const attach = (frontend: string, name: string, options?: Record<string, string>) =>
  api.post<ErrorBody>('/v1/attach', { class: 'block', frontend, device: dev(name), ...(options ? { options } : {}) });
const detach = (frontend: string, name: string) =>
  api.post<ErrorBody>('/v1/detach', { class: 'block', frontend, device: dev(name) });
const xmlOf = async (domain: string) => parseDomainXml(await libvirtd.virsh(['dumpxml', domain]));
const devgateAliases = async (domain: string) =>
  [...(await xmlOf(domain)).aliases].filter((a) => a.startsWith('ua-dg-'));

async function start(): Promise<Devgated> {
  daemon = await startInProcess(config);
  const listed = async () => (await devices()).some((d) => d.port === dev(disk.partitions[1]));
  await until('the loop partitions listed', listed, 10_000);
  return daemon;
}

it('the seed block flow against libvirt domains: list, attach a partition, refusals, --ro, detach, all free', async () => {
  await start();
  const [p1, p2] = disk.partitions;
  // The libvirt domains are frontends under their own names, and run.
  const domains = (await api.get<{ domains: string[]; running: string[] }>('/v1/domains')).body;
  expect(domains.domains).toEqual(expect.arrayContaining(DOMAINS));
  expect(domains.running).toEqual(expect.arrayContaining(DOMAINS));

  const attached = await attach('work', p1);
  expect(attached.status).toBe(200);
  expect(await holder(p1)).toBe('work');
  // In the domain's live XML, with devgate's tag: the alias, and the metadata with the device id.
  const work = await xmlOf('work');
  const tagged = work.disks.find((d) => d.alias === aliasFor(port(p1)));
  expect(tagged).toMatchObject({ type: 'block', source: `/dev/${p1}`, targetBus: 'usb', readOnly: false });
  expect(work.metadata).toEqual([
    expect.objectContaining({ alias: aliasFor(port(p1)), backend: 'dom0', portId: p1, deviceId: expect.any(String) }),
  ]);

  // The whole disk overlaps the attached partition; the partition cannot go to a second VM.
  const overlap = await attach('personal', disk.name);
  expect(overlap.status).toBeGreaterThanOrEqual(400);
  expect(overlap.body.error.code).toBe('DG_OVERLAP');
  const second = await attach('personal', p1);
  expect(second.body.error.code).toBe('DG_ALREADY_ATTACHED');
  expect(second.body.error.message).toContain('work');

  // --ro: visible in the domain XML.
  expect((await attach('personal', p2, { 'read-only': 'yes' })).status).toBe(200);
  const personal = await xmlOf('personal');
  expect(personal.disks.find((d) => d.alias === aliasFor(port(p2)))?.readOnly).toBe(true);
  expect((await devices()).find((d) => d.port === dev(p2))?.attachment?.options).toMatchObject({ 'read-only': 'yes' });

  expect((await detach('work', p1)).status).toBe(200);
  expect((await detach('personal', p2)).status).toBe(200);
  for (const name of [disk.name, p1, p2]) expect(await holder(name)).toBeUndefined();
  for (const domain of DOMAINS) expect(await devgateAliases(domain)).toEqual([]);
  await daemon!.stop();
});

it('what devgate attached stays known across devgated and libvirtd restarts; a user-attached disk is shown, never detached', async () => {
  const [p1, p2] = disk.partitions;
  await start();
  expect((await attach('work', p1)).status).toBe(200);
  await daemon!.stop();
  await start();
  expect(await holder(p1)).toBe('work');

  // libvirtd restarts under a running devgated: nothing is lost, and events still arrive afterwards.
  await libvirtd.restart();
  await until('still attached after the libvirtd restart', async () => (await holder(p1)) === 'work', 10_000);
  expect(await devgateAliases('work')).toEqual([aliasFor(port(p1))]);

  // A user attaches p2 to personal with virsh; devgated, restarted, shows it as attached there, not by devgate.
  const file = path.join(libvirtd.dir, 'users-own.xml');
  fs.writeFileSync(
    file,
    `<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/${p2}'/><target dev='sdy' bus='usb'/></disk>`,
  );
  await libvirtd.virsh(['attach-device', 'personal', file, '--live']);
  await daemon!.stop();
  await start();
  await until('the user disk shown', async () => (await holder(p2)) === 'personal', 10_000);
  const row = (await devices()).find((d) => d.port === dev(p2))!;
  expect(row.attachment?.options).toMatchObject({ 'attached-by': 'libvirt' });
  // devgate neither hands it out again nor detaches it.
  expect((await attach('vm3', p2)).body.error.code).toBe('DG_ALREADY_ATTACHED');
  const refused = await detach('personal', p2);
  expect(refused.body.error.code).toBe('DG_LIBVIRT_NOT_DEVGATES');
  expect(refused.body.error.hint).toContain('virsh detach-device-alias personal');
  expect((await xmlOf('personal')).disks.some((d) => d.source === `/dev/${p2}`)).toBe(true);

  // The user detaches it: devgate sees it leave, and audits that it ended outside devgate.
  await libvirtd.virsh(['detach-device', 'personal', file, '--live']);
  await until('the user disk gone', async () => (await holder(p2)) === undefined, 10_000);
  expect((await detach('work', p1)).status).toBe(200);
  await daemon!.stop();
});

it('virsh destroy of a domain with a devgate device frees it within 1 s, audited', async () => {
  const [p1] = disk.partitions;
  await start();
  expect((await attach('work', p1)).status).toBe(200);
  // virsh destroy returns once QEMU is gone; from then on, the device must be free within 1 s.
  await libvirtd.virsh(['destroy', 'work']);
  const destroyedAt = Date.now();
  await until('free after destroy', async () => (await holder(p1)) === undefined, 1_000);
  expect(Date.now() - destroyedAt).toBeLessThan(1_000);
  const audit = (await api.get<{ entries: AuditRow[] }>('/v1/audit?limit=1000')).body.entries.filter(
    (e) => e.action === 'attachment-ended' && e.portId === p1,
  );
  expect(audit).toEqual([
    expect.objectContaining({ frontend: 'work', outcome: 'ok', reason: expect.stringContaining('work stopped') }),
  ]);
  // Not stuck: another domain can have it.
  expect((await attach('personal', p1)).status).toBe(200);
  expect((await detach('personal', p1)).status).toBe(200);
  await libvirtd.virsh(['start', 'work']);
  await daemon!.stop();
});

it('100 concurrent attaches of one device to 5 libvirt domains: exactly one succeeds', async () => {
  const [p1] = disk.partitions;
  await start();
  await until(
    'every domain running',
    async () => {
      const { running } = (await api.get<{ running: string[] }>('/v1/domains')).body;
      return DOMAINS.every((name) => running.includes(name));
    },
    20_000,
  );
  const results = await Promise.all(Array.from({ length: 100 }, (_v, i) => attach(DOMAINS[i % 5], p1)));
  const winners = results.filter((r) => r.status === 200);
  expect(winners).toHaveLength(1);
  const codes = new Set(results.filter((r) => r.status !== 200).map((r) => r.body.error.code));
  expect([...codes].every((c) => ['DG_ATTACH_IN_PROGRESS', 'DG_ALREADY_ATTACHED'].includes(c))).toBe(true);
  // libvirt agrees: one domain has it.
  const holders: string[] = [];
  for (const domain of DOMAINS) if ((await devgateAliases(domain)).includes(aliasFor(port(p1)))) holders.push(domain);
  expect(holders).toEqual([await holder(p1)]);
  expect((await detach(holders[0], p1)).status).toBe(200);
  await daemon!.stop();
});
