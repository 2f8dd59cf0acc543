import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { firstValueFrom, filter, take, timeout } from 'rxjs';
import { type DeviceManager, Kernel } from '@devgate/core';
import { RecordedHostSource } from '@devgate/host';
import { blockModule } from '@devgate/driver-block';
import { usbModule } from '@devgate/driver-usb';
import { AgentSource } from '@devgate/backend-agent';
import { materializeHost, recordedFixture, removeDevice } from '@devgate/testkit';
import { DevgateAgent } from './agent';
import { UnixListenControl } from './control-channel';

// The real agent, reading a host tree laid out like / (a recorded machine), over a Unix socket to
// devgated's AgentSource: what the agent sends is enough for devgate's drivers to list exactly what
// they list reading the machine directly, and a device removed in the VM is gone from the listing.
jest.setTimeout(30_000);

const RECORDING = 'SHUTTLE_DH170_WITH_USB_DISK.txt';
let dir: string;
let agent: DevgateAgent;
let kernel: Kernel;
let manager: DeviceManager;
let source: AgentSource;
let roots: ReturnType<typeof materializeHost>;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-agent-'));
  roots = materializeHost(new RecordedHostSource(recordedFixture(RECORDING), 'x').snapshot(), path.join(dir, 'root'));
  fs.mkdirSync(path.join(dir, 'ports'));
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

beforeEach(() => {
  agent = new DevgateAgent({
    transport: new UnixListenControl(path.join(dir, 'agent.sock')),
    roots,
    runDir: path.join(dir, 'run'),
    portsDir: path.join(dir, 'ports'),
    log: () => undefined,
  }).start();
  source = new AgentSource({ backend: 'sys-usb', control: path.join(dir, 'agent.sock') });
  kernel = new Kernel().load(blockModule, usbModule);
  kernel.registerSource(source);
  manager = kernel.start();
});

afterEach(() => {
  kernel.dispose();
  agent.dispose();
});

function portsOf(m: DeviceManager, backend: string): string[] {
  return m
    .list({ backend, includeHidden: true })
    .map((d) => `${d.port.devclass}:${d.port.portId}`)
    .sort();
}

async function until(test: () => boolean, timeoutMs = 10_000): Promise<void> {
  if (test()) return;
  await firstValueFrom(manager.events$.pipe(filter(test), take(1), timeout(timeoutMs)));
}

it("lists through the agent exactly what devgate's drivers list reading the machine itself", async () => {
  expect(await source.whenReady(10_000)).toBe(true);
  const direct = new Kernel().load(blockModule, usbModule);
  direct.registerSource(new RecordedHostSource(recordedFixture(RECORDING), 'sys-usb'));
  const reference = direct.start();
  await until(() => portsOf(manager, 'sys-usb').length === portsOf(reference, 'sys-usb').length);
  expect(portsOf(manager, 'sys-usb')).toEqual(portsOf(reference, 'sys-usb'));
  const stick = manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc1' })!;
  const expected = reference.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc1' })!;
  expect(stick.deviceId).toBe(expected.deviceId);
  expect(stick.parent).toEqual(expected.parent);
  direct.dispose();
});

it('says in its hello which export ports it has, and refuses an export on a port it lacks', async () => {
  await source.whenReady(10_000);
  await until(() => portsOf(manager, 'sys-usb').includes('block:sdc1'));
  const stick = manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc1' })!;
  // No export ports in this VM: nothing is free.
  await expect(source.dataPath(stick, { kind: 'block', params: {}, options: {} })).rejects.toMatchObject({
    code: expect.stringMatching(/DG_NO_FREE_EXPORT_PORT|DG_AGENT_REFUSED/),
  });
});

// Last: it changes the machine.
it('a device removed in the VM is gone from the listing', async () => {
  await source.whenReady(10_000);
  await until(() => portsOf(manager, 'sys-usb').includes('block:sdc1'));
  const stick = manager.get({ devclass: 'block', backend: 'sys-usb', portId: 'sdc' })!;
  const usbParent = stick.parent!;
  const usbDevice = new RecordedHostSource(recordedFixture(RECORDING), 'x')
    .snapshot()
    .devices('usb')
    .find((r) => r.devpath.endsWith(`/${usbParent.portId}`))!;
  removeDevice(path.join(dir, 'root'), usbDevice.devpath);
  await until(() => !portsOf(manager, 'sys-usb').some((p) => p.startsWith('block:sdc')));
  expect(portsOf(manager, 'sys-usb')).not.toContain(`usb:${usbParent.portId}`);
});
