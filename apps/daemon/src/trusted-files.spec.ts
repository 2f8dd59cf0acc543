/**
 * Files devgated reads as root besides its configuration: the USB rules (which devices the host
 * lets in) and the domain registry (which QMP sockets and agents it talks to, and so which VM gets a
 * device). Like the configuration (sshd's StrictModes), one another user could write, or put in
 * place, is refused before devgated opens anything.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { errorCode } from '@devgate/core';
import { type DaemonConfig } from '@devgate/service';
import { cleanupHarness, harnessConfig, makeTempDir, startInProcess } from './testing/daemon-harness.js';

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
