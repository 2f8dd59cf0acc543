/**
 * Relative paths in devgated's configuration are beside the file that names them, as an included
 * path is for sshd: devgated's own working directory is `/` under systemd, and another one when
 * started by hand, so a path read from it would change with how devgated was started.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { labBackendUp } from '@devgate/backend-qemu';
import { loadConfig } from '@devgate/service';
import { materializeHost, recordedFixture } from '@devgate/testkit';
import { ApiClient, cleanupHarness, makeTempDir, startInProcess } from './testing/daemon-harness.js';

afterAll(() => cleanupHarness());

it('uses the state directory and the domain registry beside its configuration, started from elsewhere', async () => {
  const dir = makeTempDir('devgated-relative-');
  const elsewhere = makeTempDir('devgated-cwd-');
  materializeHost([], path.join(dir, 'host'));
  await labBackendUp('sys-usb', recordedFixture('usbkbd.umockdev'), { registryFile: path.join(dir, 'domains.json') });
  const file = path.join(dir, 'devgated.json');
  fs.writeFileSync(
    file,
    JSON.stringify({
      socket: 'run/devgate.sock',
      stateDir: 'state',
      domains: 'domains.json',
      backends: { dom0: { sysroot: 'host' } },
      libvirt: { defaultUri: false },
    }),
  );
  const cwd = process.cwd();
  process.chdir(elsewhere);
  try {
    await startInProcess(loadConfig(file));
  } finally {
    process.chdir(cwd);
  }

  expect(fs.readdirSync(elsewhere)).toEqual([]);
  expect(fs.existsSync(path.join(dir, 'state', 'state.db'))).toBe(true);
  const client = new ApiClient(path.join(dir, 'run', 'devgate.sock'));
  const devices = (await client.get<{ devices: { backend: string }[] }>('/v1/devices?all=true')).body.devices;
  // sys-usb is named only in the registry beside the configuration (dom0, an empty tree, lists nothing).
  expect(new Set(devices.map((d) => d.backend))).toEqual(new Set(['sys-usb']));
});
