import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { once } from 'node:events';
import * as os from 'node:os';
import * as path from 'node:path';
import { recordedFixture, savedEnv } from '@devgate/testkit';
import { openHost, withHost } from './host';
import { runCaptured } from './test-io';

// Without devgated, a root `devgate` or `qvm-*` command reads the domain registry as devgated does
// (readTrustedRegistry): one another user could write names no QMP socket, agent or recording it uses.
let dir: string;
let registry: string;
const env = savedEnv('DEVGATE_DOMAINS', 'DEVGATE_SOCKET');

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-cli-registry-'));
  registry = path.join(dir, 'domains.json');
  // A backend domain replayed from a recording: what the registry names shows in a listing.
  const backends = { 'sys-usb': { recording: recordedFixture('KIOXIA_TransMemory.txt') } };
  fs.writeFileSync(registry, JSON.stringify({ domains: {}, backends }), { mode: 0o644 });
  process.env.DEVGATE_DOMAINS = registry;
  // No daemon: a socket nobody listens on.
  process.env.DEVGATE_SOCKET = path.join(dir, 'no-devgated.sock');
});

afterEach(() => {
  env.restore();
  fs.rmSync(dir, { recursive: true, force: true });
});

it('lists what a registry only root and its owner may write names (0644)', async () => {
  const { code, out, notices } = await runCaptured('devgate', ['list', '--json', '--class', 'usb']);
  expect(notices).toContain('working in-process');
  expect(code).toBe(0);
  expect((JSON.parse(out) as { port: string }[]).map((d) => d.port)).toContain('sys-usb:1-1.1.2');
});

it('refuses a registry others may write (0666): DG_CONFIG_INVALID with its hint, nothing listed', async () => {
  fs.chmodSync(registry, 0o666);
  for (const [prog, argv] of [
    ['devgate', ['list']],
    ['qvm-block', ['list']],
    ['qvm-block', ['attach', 'work', 'sys-usb:sda1']],
  ] as const) {
    const { code, out, err } = await runCaptured(prog, argv);
    expect({ code, out }).toEqual({ code: 1, out: '' });
    expect(err).toBe(
      `${prog}: error: ${registry}: the file is writable by other users (mode 0666)\n` +
        `${prog}: hint: make it root's and writable by root alone, and its directory too (chown root; chmod go-w)\n`,
    );
  }
  // Refused before the lock a change takes turns with, which would be made beside the registry.
  expect(fs.readdirSync(dir)).toEqual(['domains.json']);
});

it("keeps the QEMU connector to the registry it read when the file is made others' while the command runs", async () => {
  fs.writeFileSync(registry, JSON.stringify({ domains: { work: { qmp: path.join(dir, 'work.qmp') } } }));
  const host = await openHost({
    domains: registry,
    recording: recordedFixture('KIOXIA_TransMemory.txt'),
    libvirtUris: [],
  });
  try {
    expect(host.manager.domains()).toEqual(['dom0', 'work']);
    // Rewritten by another user: a VM added, and work's QMP socket moved.
    fs.chmodSync(registry, 0o666);
    const moved = { work: { qmp: path.join(dir, 'elsewhere.qmp') }, other: { qmp: path.join(dir, 'other.qmp') } };
    fs.writeFileSync(registry, JSON.stringify({ domains: moved }));
    expect(host.manager.domains()).toEqual(['dom0', 'work']);
  } finally {
    host.close();
  }
});

it('says what is wrong with a broken registry under the lock, as it opens the host', async () => {
  fs.writeFileSync(registry, '{ "domains": ');
  const { code, out, err } = await runCaptured('qvm-block', ['attach', 'work', 'sys-usb:sda1']);
  expect({ code, out }).toEqual({ code: 1, out: '' });
  expect(err).toContain(`qvm-block: error: domain registry ${registry}: $: not valid JSON`);
  // Taken before the read was reported: the lock file a change takes turns with is there.
  expect(fs.readdirSync(dir).sort()).toEqual(['domains.json', 'domains.json.lock']);
});

it('reads the registry again once it holds the lock: the command that held it may have added a backend', async () => {
  const work = { qmp: path.join(dir, 'work.qmp') };
  fs.writeFileSync(registry, JSON.stringify({ domains: { work } }));
  // Another command holds the CLI lock (flock(1) on the lock file beside the registry) until its
  // input closes, and adds a backend VM meanwhile (`devgate usbvm create`).
  const holder = spawn('flock', [`${registry}.lock`, '-c', 'echo held; read done'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  try {
    await once(holder.stdout, 'data');
    const backends = withHost({ domains: registry, libvirtUris: [] }, (host) => host.backends);
    const backend = { 'sys-usb': { recording: recordedFixture('KIOXIA_TransMemory.txt') } };
    fs.writeFileSync(registry, JSON.stringify({ domains: { work }, backends: backend }));
    holder.stdin.end();
    expect(await backends).toContain('sys-usb');
  } finally {
    holder.kill();
  }
});
