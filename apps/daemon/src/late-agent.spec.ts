import * as fs from 'node:fs';
import * as path from 'node:path';
import { type HostTree } from '@devgate/core';
import { RecordedHostSource } from '@devgate/host';
import { FakeAgent } from '@devgate/backend-agent';
import { recordedFixture } from '@devgate/testkit';
import { type Devgated } from './devgated';
import { ApiClient, cleanupHarness, harnessConfig, makeTempDir, startInProcess, until } from './testing/daemon-harness';

// devgated (re)started while a USB VM's agent is silent: what is attached of that VM's devices is not
// taken for gone (its devices are simply not listed yet). Once the agent answers, it is read back: a
// device still there stays attached, one gone is detached. The hypervisor is a connector from a
// driver package (in this process: it shares what is attached with the test).
jest.setTimeout(60_000);

interface Hypervisor {
  attached: { port: { devclass: string; backend: string; portId: string }; frontend: string; options: object }[];
  detached: string[];
}
const hypervisor = globalThis as unknown as { lateAgentHypervisor: Hypervisor };

const CONNECTOR = `
const state = globalThis.lateAgentHypervisor;
exports.devgateModule = {
  id: 'test-hypervisor',
  register: (registry) => registry.registerConnector({
    id: 'test-hypervisor',
    manages: (domain) => domain === 'work',
    domains: () => ['work'],
    isRunning: async () => true,
    attach: async () => { throw new Error('no attach in this test'); },
    detach: async (_frontend, port) => {
      state.detached.push(port.portId);
      state.attached = state.attached.filter((a) => a.port.portId !== port.portId);
    },
    attachments: async () => state.attached,
    dispose() {},
  }),
};
`;

let dir: string;
let fake: FakeAgent;
let daemon: Devgated | undefined;
let usbDisk: HostTree;

beforeAll(() => {
  usbDisk = new RecordedHostSource(recordedFixture('SHUTTLE_DH170_WITH_USB_DISK.txt'), 'x').snapshot();
});

afterEach(async () => {
  await daemon?.stop();
  await fake?.close();
  cleanupHarness();
});

it('keeps the attachments of a USB VM whose agent is silent at start, and reads them back when it answers', async () => {
  dir = makeTempDir('devgated-late-agent-');
  const attachment = (portId: string, devclass: string) => ({
    port: { devclass, backend: 'sys-usb', portId },
    frontend: 'work',
    options: {},
  });
  hypervisor.lateAgentHypervisor = { attached: [attachment('sdc1', 'block'), attachment('9-9', 'usb')], detached: [] };
  fs.writeFileSync(path.join(dir, 'hypervisor.js'), CONNECTOR);
  fake = await FakeAgent.listen(path.join(dir, 'agent.sock')); // it says nothing until told
  const config = harnessConfig(dir, {
    backends: { dom0: { sysroot: path.join(dir, 'host') }, 'sys-usb': { agent: fake.path, exports: {} } },
    modules: [{ specifier: path.join(dir, 'hypervisor.js'), from: dir }],
  });
  daemon = await startInProcess(config);
  expect(hypervisor.lateAgentHypervisor.detached).toEqual([]);

  await fake.connection();
  fake.hello([]);
  fake.tree(usbDisk);
  await until('the vanished device detached', () => hypervisor.lateAgentHypervisor.detached.length > 0);
  expect(hypervisor.lateAgentHypervisor.detached).toEqual(['9-9']);
  const api = new ApiClient(config.socket);
  const listed = (
    await api.get<{ devices: { port: string; attachment: { frontend: string } | null }[] }>('/v1/devices?all=true')
  ).body.devices;
  expect(listed.find((d) => d.port === 'sys-usb:sdc1')?.attachment).toMatchObject({ frontend: 'work' });
});
