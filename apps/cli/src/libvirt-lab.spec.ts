import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { aliasFor, parseDomainXml } from '@devgate/backend-libvirt';
import { PrivateLibvirtd, stopAllLibvirtds } from '@devgate/backend-libvirt/testing';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks, savedEnv } from '@devgate/testkit';
import { runCaptured } from './test-io';

// The CLI with libvirt domains, without devgated: `devgate lab up --libvirt` at LIBVIRT_DEFAULT_URI
// (a private libvirtd started here), then Qubes' qvm-block flow on that domain with a real loop disk.
jest.setTimeout(120_000);

let dir: string;
let libvirtd: PrivateLibvirtd;
let disk: LoopDisk;
const env = savedEnv('LIBVIRT_DEFAULT_URI', 'DEVGATE_DOMAINS', 'DEVGATE_SOCKET');

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-cli-libvirt-'));
  libvirtd = await PrivateLibvirtd.start();
  process.env.LIBVIRT_DEFAULT_URI = libvirtd.uri;
  process.env.DEVGATE_DOMAINS = path.join(dir, 'domains.json');
  process.env.DEVGATE_SOCKET = path.join(dir, 'no-devgated.sock');
  disk = createLoopDisk({ sizeMiB: 16, partitions: [{}] });
});

afterAll(async () => {
  await stopAllLibvirtds();
  disposeAllLoopDisks();
  env.restore();
  fs.rmSync(dir, { recursive: true, force: true });
});

it('lab up --libvirt starts a domain that qvm-block attaches to and detaches from; lab down removes it', async () => {
  const up = await runCaptured('devgate', ['lab', 'up', '--libvirt', 'win10']);
  expect(up).toMatchObject({ code: 0, err: '' });
  expect(up.out).toMatch(/^win10 +libvirt +qemu:\/\/\/system\?socket=/m);
  expect((await libvirtd.virsh(['domstate', 'win10'])).trim()).toBe('running');

  const partition = disk.partitions[0];
  expect(await runCaptured('qvm-block', ['-a', 'win10', `dom0:${partition}`])).toMatchObject({ code: 0, err: '' });
  const xml = parseDomainXml(await libvirtd.virsh(['dumpxml', 'win10']));
  expect(xml.aliases.has(aliasFor({ devclass: 'block', backend: 'dom0', portId: partition }))).toBe(true);
  const listed = await runCaptured('qvm-block', ['-l']);
  expect(listed.out).toMatch(new RegExp(`^dom0:${partition} .*\\(attached to 'win10'`, 'm'));

  expect(await runCaptured('qvm-block', ['-d', `dom0:${partition}`])).toMatchObject({ code: 0, err: '' });
  const after = parseDomainXml(await libvirtd.virsh(['dumpxml', 'win10']));
  expect([...after.aliases].filter((a) => a.startsWith('ua-dg-'))).toEqual([]);

  // A domain that devgate did not make is never taken down by lab down.
  await libvirtd.startDomain('users-vm');
  const refused = await runCaptured('devgate', ['lab', 'down', '--libvirt', 'users-vm']);
  expect(refused.code).toBe(1);
  expect(refused.err).toContain("'users-vm' was not started by 'devgate lab up'");
  expect((await libvirtd.virsh(['domstate', 'users-vm'])).trim()).toBe('running');

  expect(await runCaptured('devgate', ['lab', 'down', '--libvirt', 'win10'])).toMatchObject({ code: 0, err: '' });
  expect(await libvirtd.domains()).not.toContain('win10');
});
