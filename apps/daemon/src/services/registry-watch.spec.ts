import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Kernel, errorCode } from '@devgate/core';
import { labBackendUp, labDown } from '@devgate/backend-qemu';
import { recordedFixture } from '@devgate/testkit';
import { RegistryWatch } from './registry-watch.js';

const waitFor = async (what: string, check: () => boolean) => {
  const deadline = Date.now() + 10_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`no ${what} within 10 s`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
};

it('follows the registry’s backends, and keeps them through a registry that cannot be read', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'registry-watch-'));
  const registryFile = path.join(dir, 'domains.json');
  const kernel = new Kernel();
  const manager = kernel.start();
  const warnings: string[] = [];
  const added: string[] = [];
  const watch = new RegistryWatch(manager, {
    domains: registryFile,
    taken: (backend) => backend === 'configured',
    added: (source) => added.push(source.backend),
    warn: (_fields, message) => warnings.push(message),
    refused: (error) => warnings.push(error.message),
  });
  const backends = () => manager.sources.map((s) => s.backend).sort();
  try {
    watch.start(10);
    expect(backends()).toEqual([]);
    await labBackendUp('sys-usb', recordedFixture('usbkbd.umockdev'), { registryFile });
    await labBackendUp('configured', recordedFixture('fido2.umockdev'), { registryFile });
    await waitFor('sys-usb added', () => backends().includes('sys-usb'));
    expect(added).toEqual(['sys-usb']);

    // Broken by hand: said once, and what was read stays.
    const good = fs.readFileSync(registryFile, 'utf8');
    fs.writeFileSync(registryFile, '{ "domains": ');
    await waitFor('a warning', () => warnings.length > 0);
    expect(warnings).toEqual(['domain registry unreadable; backends unchanged']);
    expect(backends()).toEqual(['sys-usb']);
    fs.writeFileSync(registryFile, good);

    await labDown(['sys-usb'], { registryFile });
    await waitFor('sys-usb withdrawn', () => !backends().includes('sys-usb'));
    expect(backends()).toEqual([]);
  } finally {
    watch.dispose();
    kernel.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

it('refuses a re-read of a registry another user could change, keeping what it read, until it is safe again', async () => {
  // devgated checks the registry at start as sshd's StrictModes does; one made writable by others
  // while it runs (a chmod, then a rewrite) must not choose its backends either.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'registry-watch-'));
  const registryFile = path.join(dir, 'domains.json');
  const kernel = new Kernel();
  const manager = kernel.start();
  const warnings: string[] = [];
  const refusals: string[] = [];
  const watch = new RegistryWatch(manager, {
    domains: registryFile,
    taken: () => false,
    added: () => undefined,
    warn: (_fields, message) => warnings.push(message),
    refused: (error) => refusals.push(`${errorCode(error)}: ${error.message}`),
  });
  const backends = () => manager.sources.map((s) => s.backend).sort();
  try {
    await labBackendUp('sys-usb', recordedFixture('usbkbd.umockdev'), { registryFile });
    watch.start(10);
    expect(backends()).toEqual(['sys-usb']);

    fs.chmodSync(registryFile, 0o666);
    fs.writeFileSync(registryFile, JSON.stringify({ domains: {} }));
    await waitFor('the rewrite refused or read', () => refusals.length > 0 || !backends().includes('sys-usb'));
    // Several polls later: refused once (until the file changes again), and the last good backends stay.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(refusals).toEqual([`DG_CONFIG_INVALID: ${registryFile}: the file is writable by other users (mode 0666)`]);
    expect(backends()).toEqual(['sys-usb']);

    // Safe again (a chmod alone changes neither its size nor its mtime): what it says now is read.
    fs.chmodSync(registryFile, 0o644);
    await waitFor('sys-usb withdrawn', () => !backends().includes('sys-usb'));
    expect(refusals).toHaveLength(1);
    expect(warnings).toEqual([]);
  } finally {
    watch.dispose();
    kernel.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

it('logs a callback that throws on its timer, rather than letting it end the process, and keeps following', async () => {
  // devgated's `refused` audits the refusal: a store that refuses the entry throws there.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'registry-watch-'));
  const registryFile = path.join(dir, 'domains.json');
  const kernel = new Kernel();
  const manager = kernel.start();
  const warnings: string[] = [];
  const watch = new RegistryWatch(manager, {
    domains: registryFile,
    taken: () => false,
    added: () => {
      throw new Error('added broke');
    },
    warn: (fields, message) => warnings.push(`${message}: ${(fields as { err: Error }).err.message}`),
    refused: () => {
      throw new Error('refused broke');
    },
  });
  const backends = () => manager.sources.map((s) => s.backend).sort();
  try {
    watch.start(10);
    await labBackendUp('sys-usb', recordedFixture('usbkbd.umockdev'), { registryFile });
    await labBackendUp('sys-net', recordedFixture('fido2.umockdev'), { registryFile });
    // Uncaught on the timer, either throw would fail this test (jest reports it) and end devgated.
    await waitFor('both added', () => backends().length === 2);
    expect(backends()).toEqual(['sys-net', 'sys-usb']);

    fs.chmodSync(registryFile, 0o666);
    await waitFor('the refusal', () => warnings.some((w) => w.includes('refused broke')));
    fs.chmodSync(registryFile, 0o644);
    await labDown(['sys-usb'], { registryFile });
    await waitFor('sys-usb withdrawn', () => !backends().includes('sys-usb'));
    expect(warnings).toEqual([
      'domain registry watch: the added callback failed: added broke',
      'domain registry watch: the added callback failed: added broke',
      'domain registry watch: the refused callback failed: refused broke',
    ]);
  } finally {
    watch.dispose();
    kernel.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
