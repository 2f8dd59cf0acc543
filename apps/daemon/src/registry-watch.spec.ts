import { labBackendUp, labDown } from '@devgate/backend-qemu';
import { recordedFixture } from '@devgate/testkit';
import {
  ApiClient,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  startInProcess,
  until,
} from './testing/daemon-harness.js';

// Backend domains that come and go while devgated runs: `devgate lab up NAME --recording FILE` (and
// `devgate usbvm create`, the same registry entry for an agent) is picked up without a restart, and
// `lab down` withdraws it (services/registry-watch.spec.ts: a broken registry, a withdrawn attachment).
jest.setTimeout(60_000);

afterAll(() => cleanupHarness());

interface DeviceRow {
  readonly port: string;
  readonly backend: string;
}

it('lists a recorded backend brought up while devgated runs, and drops it when it goes down', async () => {
  const dir = makeTempDir('devgated-registry-');
  const config = harnessConfig(dir, { libvirt: { uris: [] } });
  const registryFile = config.domains!;
  await startInProcess(config);
  const client = new ApiClient(config.socket);
  const backends = async () =>
    new Set((await client.get<{ devices: DeviceRow[] }>('/v1/devices?all=true')).body.devices.map((d) => d.backend));
  expect(await backends()).not.toContain('sys-usb');

  await labBackendUp('sys-usb', recordedFixture('usbkbd.umockdev'), { registryFile });
  // Polled every second; the bound is for a loaded CI machine.
  await until(
    'the recorded sys-usb listed by the running devgated',
    async () => (await backends()).has('sys-usb'),
    20_000,
  );
  const listed = (await client.get<{ devices: DeviceRow[] }>('/v1/devices?class=usb')).body.devices;
  expect(listed.map((d) => d.port)).toContainEqual(expect.stringMatching(/^sys-usb:\d+-[\d.]+$/));

  await labDown(['sys-usb'], { registryFile });
  await until('sys-usb withdrawn', async () => !(await backends()).has('sys-usb'), 20_000);
  expect((await client.get<{ devices: DeviceRow[] }>('/v1/devices?class=usb')).body.devices).toEqual([]);
});
