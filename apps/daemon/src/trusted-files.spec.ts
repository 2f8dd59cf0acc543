/**
 * Files devgated reads as root besides its configuration: the USB rules (which devices the host
 * lets in) and the domain registry (which QMP sockets and agents it talks to, and so which VM gets a
 * device). Like the configuration (sshd's StrictModes), one another user could write, or put in
 * place, is refused before devgated opens anything.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino from 'pino';
import { errorCode } from '@devgate/core';
import { labBackendUp } from '@devgate/backend-qemu';
import { type DaemonConfig } from '@devgate/service';
import { recordedFixture } from '@devgate/testkit';
import { Devgated } from './devgated.js';
import {
  ApiClient,
  DaemonProcess,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  registerVms,
  startInProcess,
  until,
} from './testing/daemon-harness.js';

afterAll(() => cleanupHarness());

/** What devgated's start says: 'started', or the code and message of its refusal. */
async function startWith(config: DaemonConfig): Promise<string> {
  try {
    const daemon = await startInProcess(config);
    await daemon.stop();
    return 'started';
  } catch (error) {
    return `${errorCode(error)}: ${(error as Error).message}`;
  }
}

describe('the USB rules file', () => {
  let dir: string;
  let rules: string;
  const config = () => harnessConfig(dir, { usbPolicy: { rules, implicitTarget: 'block' } });
  beforeEach(() => {
    dir = makeTempDir('devgated-trusted-usb-');
    rules = path.join(dir, 'rules.conf');
    fs.writeFileSync(rules, 'allow id 046d:c52b\n', { mode: 0o644 });
  });

  it('is read when only root can change it', async () => {
    expect(await startWith(config())).toBe('started');
  });

  it('is refused when another user could write it or replace it', async () => {
    fs.chmodSync(rules, 0o666);
    expect(await startWith(config())).toBe(
      `DG_CONFIG_INVALID: ${rules}: the file is writable by other users (mode 0666)`,
    );
    fs.chmodSync(rules, 0o644);
    fs.chownSync(rules, 4242, 4242);
    expect(await startWith(config())).toBe(
      `DG_CONFIG_INVALID: ${rules}: the file is owned by uid 4242, neither root nor uid 0`,
    );
    fs.chownSync(rules, 0, 0);
    fs.chmodSync(dir, 0o777);
    expect(await startWith(config())).toBe(
      `DG_CONFIG_INVALID: ${rules}: its directory is writable by other users (mode 0777)`,
    );
  });
});

describe('the domain registry', () => {
  let dir: string;
  let domains: string;
  const config = () => harnessConfig(dir, { domains });
  beforeEach(() => {
    dir = makeTempDir('devgated-trusted-registry-');
    fs.mkdirSync(path.join(dir, 'registry'));
    domains = path.join(dir, 'registry', 'domains.json');
  });

  it('is read when only root can change it, or make it', async () => {
    expect(await startWith(config())).toBe('started');
    fs.writeFileSync(domains, JSON.stringify({ domains: { work: { qmp: '/run/work.qmp' } } }), { mode: 0o644 });
    expect(await startWith(config())).toBe('started');
    // A sticky directory (/tmp): others cannot replace a file they do not own.
    fs.chmodSync(path.dirname(domains), 0o1777);
    expect(await startWith(config())).toBe('started');
  });

  it('is refused when another user could write it, replace it or create it', async () => {
    fs.writeFileSync(domains, JSON.stringify({ domains: {} }), { mode: 0o644 });
    fs.chmodSync(domains, 0o664);
    expect(await startWith(config())).toBe(
      `DG_CONFIG_INVALID: ${domains}: the file is writable by other users (mode 0664)`,
    );
    fs.chmodSync(domains, 0o644);
    fs.chownSync(domains, 4242, 4242);
    expect(await startWith(config())).toBe(
      `DG_CONFIG_INVALID: ${domains}: the file is owned by uid 4242, neither root nor uid 0`,
    );
    fs.rmSync(domains);
    // Not there yet: whoever may create it in its directory, sticky or not, chooses the VMs.
    fs.chmodSync(path.dirname(domains), 0o1777);
    expect(await startWith(config())).toBe(
      `DG_CONFIG_INVALID: ${domains}: it does not exist, and its directory is writable by other users, who could create it (mode 1777)`,
    );
  });
});

describe('a FIFO in the place of the domain registry', () => {
  // Opening one waits for a writer: devgated hung at start, before it logged a word. It runs as its
  // own process here, so that a start that blocks fails this test by its timeout, not jest.
  it('is refused at start, at once, as not a regular file', async () => {
    const dir = makeTempDir('devgated-trusted-fifo-');
    const domains = path.join(dir, 'domains.json');
    execFileSync('mkfifo', ['-m', '0644', domains]);
    await expect(DaemonProcess.start(harnessConfig(dir, { domains }), { readyTimeoutMs: 60_000 })).rejects.toThrow(
      `devgated: error: DG_CONFIG_INVALID: ${domains}: not a regular file`,
    );
  }, 10_000);
});

describe('the domain registry, re-read while devgated runs', () => {
  // The registry is followed every second (services/registry-watch.ts): one made writable by others
  // after the start must not be read either, or the check at start would only delay its writer.
  interface AuditRow {
    readonly actor: string;
    readonly action: string;
    readonly outcome: string;
    readonly code?: string;
    readonly reason?: string;
  }

  it('is refused as at start (logged, audited, DG_CONFIG_INVALID) and the last good one stays', async () => {
    const dir = makeTempDir('devgated-trusted-reread-');
    fs.mkdirSync(path.join(dir, 'registry'));
    const domains = path.join(dir, 'registry', 'domains.json');
    await labBackendUp('sys-usb', recordedFixture('usbkbd.umockdev'), { registryFile: domains });
    const config = harnessConfig(dir, { domains });
    const lines: { level: number; msg: string; code?: string; reason?: string }[] = [];
    const daemon = await Devgated.start(
      config,
      pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) }),
    );
    try {
      const client = new ApiClient(config.socket);
      const backends = async () =>
        new Set(
          (await client.get<{ devices: { backend: string }[] }>('/v1/devices?all=true')).body.devices.map(
            (d) => d.backend,
          ),
        );
      const audited = async () => (await client.get<{ entries: AuditRow[] }>('/v1/audit?action=registry')).body.entries;
      expect(await backends()).toContain('sys-usb');

      fs.chmodSync(domains, 0o666);
      fs.writeFileSync(domains, JSON.stringify({ domains: {} }));
      await until(
        'the rewritten registry refused or read',
        async () => (await audited()).length > 0 || !(await backends()).has('sys-usb'),
        10_000,
      );
      const reason = `${domains}: the file is writable by other users (mode 0666)`;
      expect(await audited()).toEqual([
        expect.objectContaining({ actor: 'devgated', outcome: 'denied', code: 'DG_CONFIG_INVALID', reason }),
      ]);
      expect(lines.filter((line) => line.code === 'DG_CONFIG_INVALID')).toEqual([
        expect.objectContaining({ level: 50, reason }),
      ]);
      expect(await backends()).toContain('sys-usb');
    } finally {
      await daemon.stop();
    }
  });

  it("holds the QEMU connector's own re-read to it too: the refused registry names no VM, and is reported once", async () => {
    const dir = makeTempDir('devgated-trusted-connector-');
    fs.mkdirSync(path.join(dir, 'registry'));
    const config = harnessConfig(dir, { domains: path.join(dir, 'registry', 'domains.json') });
    registerVms(config, ['work']);
    const domains = config.domains!;
    const lines: { code?: string }[] = [];
    const daemon = await Devgated.start(
      config,
      pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) }),
    );
    try {
      const client = new ApiClient(config.socket);
      const vms = async () => (await client.get<{ domains: string[] }>('/v1/domains')).body.domains.sort();
      const audited = async () => (await client.get<{ entries: AuditRow[] }>('/v1/audit?action=registry')).body.entries;
      expect(await vms()).toEqual(['dom0', 'work']);

      // Writable by others, then rewritten: work's QMP socket moved, and a VM added.
      fs.chmodSync(domains, 0o666);
      const moved = { work: { qmp: path.join(dir, 'elsewhere.qmp') }, evil: { qmp: path.join(dir, 'evil.qmp') } };
      fs.writeFileSync(domains, JSON.stringify({ domains: moved }));
      expect(await vms()).toEqual(['dom0', 'work']);
      // Reported as the registry watch reports it, once: the connector adds no report of its own.
      await until('the rewritten registry refused', async () => (await audited()).length > 0, 10_000);
      expect(await vms()).toEqual(['dom0', 'work']);
      expect(await audited()).toHaveLength(1);
      expect(lines.filter((line) => line.code === 'DG_CONFIG_INVALID')).toHaveLength(1);

      // Safe again (a chmod alone): what it says now is read.
      fs.chmodSync(domains, 0o644);
      expect(await vms()).toEqual(['dom0', 'evil', 'work']);
    } finally {
      await daemon.stop();
    }
  });
});
