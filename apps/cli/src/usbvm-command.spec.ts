import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCaptured } from './test-io';

// `devgate usbvm` without a guest: what it refuses, and how it says so.
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usbvm-cli-'));
  process.env.DEVGATE_DOMAINS = path.join(dir, 'domains.json');
});

afterAll(() => {
  delete process.env.DEVGATE_DOMAINS;
  fs.rmSync(dir, { recursive: true, force: true });
});

const devgate = (...argv: string[]) => runCaptured('devgate', argv);

it('refuses --controller on a host without an IOMMU, with DG_NO_IOMMU, before touching anything', async () => {
  const hasIommu = fs.existsSync('/sys/kernel/iommu_groups') && fs.readdirSync('/sys/kernel/iommu_groups').length > 0;
  const result = await devgate('usbvm', 'create', '--controller', '0000:00:14.0');
  expect(result.code).toBe(1);
  if (!hasIommu) expect(result.err).toContain('cannot be given to a VM: this host has no IOMMU');
  expect(fs.existsSync(path.join(dir, 'domains.json'))).toBe(false);
});

it('asks for --emulated or --controller', async () => {
  const result = await devgate('usbvm', 'create');
  expect(result).toMatchObject({ code: 2, err: expect.stringContaining('--emulated') });
});

it('remove: prints the seed warning and, without a terminal, wants --yes; an unknown VM is refused', async () => {
  const refused = await devgate('usbvm', 'remove');
  expect(refused.code).toBe(2);
  expect(refused.err).toContain(
    'Warning: This procedure will result in your USB controller(s) being attached directly to dom0.',
  );
  expect(refused.err).toContain('--yes');
  expect(await devgate('usbvm', 'remove', '--yes')).toMatchObject({
    code: 1,
    err: expect.stringContaining("no such domain: 'sys-usb'"),
  });
});

it('remove refuses a domain usbvm create did not make', async () => {
  fs.writeFileSync(
    path.join(dir, 'domains.json'),
    JSON.stringify({ dom0: 'dom0', domains: { work: { qmp: '/run/work.qmp', lab: true } } }),
  );
  expect(await devgate('usbvm', 'remove', '--name', 'work', '--yes')).toMatchObject({
    code: 1,
    err: expect.stringContaining("'work' is not a USB VM made by 'devgate usbvm create'"),
  });
  fs.rmSync(path.join(dir, 'domains.json'));
});

it('create and remove refuse a registry others may write (0666), as the other commands do', async () => {
  const registry = path.join(dir, 'domains.json');
  // sys-usb registered already: create stops at the registry whether it is checked or not, and boots nothing.
  const agent = { control: path.join(dir, 'agent.sock'), exports: {}, usbvm: true };
  const domains = { 'sys-usb': { qmp: path.join(dir, 'sys-usb.qmp'), lab: true, agent } };
  fs.writeFileSync(registry, JSON.stringify({ dom0: 'dom0', domains }));
  fs.chmodSync(registry, 0o666);
  const refusal =
    `devgate: error: ${registry}: the file is writable by other users (mode 0666)\n` +
    `devgate: hint: make it root's and writable by root alone, and its directory too (chown root; chmod go-w)\n`;
  expect(await devgate('usbvm', 'create', '--emulated')).toMatchObject({ code: 1, out: '', err: refusal });
  const warning = 'Warning: This procedure will result in your USB controller(s) being attached directly to dom0.\n';
  expect(await devgate('usbvm', 'remove', '--yes')).toMatchObject({ code: 1, out: '', err: warning + refusal });
  expect(JSON.parse(fs.readFileSync(registry, 'utf8'))).toEqual({ dom0: 'dom0', domains });
  fs.rmSync(registry);
});
