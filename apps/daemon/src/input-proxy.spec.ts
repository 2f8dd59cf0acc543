import * as fs from 'node:fs';
import * as path from 'node:path';
import { recordedFixture } from '@devgate/testkit';
import { ApiClient, cleanupHarness, harnessConfig, makeTempDir, startInProcess, until } from './testing/daemon-harness';

// Qubes' input proxy in devgated: a USB VM's input devices (here a recorded Dell laptop standing in for
// sys-usb) are decided by Qubes' input policy once per physical device; asks name the device, a timeout
// denies, every decision is audited and streamed through the API.
jest.setTimeout(30_000);
afterAll(() => cleanupHarness());

interface AskRow {
  id: string;
  device: string;
  description: string;
  candidates: string[];
  reason: string;
}
interface AuditRow {
  action: string;
  portId?: string;
  frontend?: string;
  outcome: string;
  reason?: string;
  actor: string;
}

async function start(askTimeoutSeconds: number, policy?: string) {
  const dir = makeTempDir('devgated-input-');
  const policyDir = path.join(dir, 'policy.d');
  if (policy !== undefined) {
    fs.mkdirSync(policyDir);
    fs.writeFileSync(path.join(policyDir, '50-config-input.policy'), policy);
  }
  process.env.DEVGATE_INPUT_POLICY = policyDir;
  const config = harnessConfig(dir, {
    backends: {
      dom0: { sysroot: path.join(dir, 'host') },
      'sys-usb': { recording: recordedFixture('TOSHIBA_NVME.txt') },
    },
    askTimeoutSeconds,
  });
  const daemon = await startInProcess(config);
  return { daemon, client: new ApiClient(config.socket) };
}

afterEach(() => delete process.env.DEVGATE_INPUT_POLICY);

const audit = async (client: ApiClient) =>
  (await client.get<{ entries: AuditRow[] }>('/v1/audit?order=asc&limit=1000')).body.entries.filter((e) =>
    ['input-policy', 'answer'].includes(e.action),
  );

it('with Qubes’ defaults: one ask names the device with a mouse; Allow is audited; the keyboards sent nothing', async () => {
  const { daemon, client } = await start(60);
  try {
    await until('the ask', async () => (await client.get<{ asks: AskRow[] }>('/v1/asks')).body.asks.length > 0);
    const { asks } = (await client.get<{ asks: AskRow[] }>('/v1/asks')).body;
    // One question for the touchpad-with-stick (two event nodes), none for anything else.
    expect(asks).toHaveLength(1);
    expect(asks[0]).toMatchObject({
      device: 'sys-usb:i2c-DLL07D1_01',
      candidates: ['dom0'],
      description: 'Input: unknown vendor DLL07D1:01 044E:120B',
    });
    expect(asks[0].reason).toMatch(
      /^input from sys-usb:i2c-DLL07D1_01 \(.*044e:120b, touchpad, i2c, .*\) to dom0; event nodes event13;/,
    );
    const before = await audit(client);
    const denied = before.filter((e) => e.outcome === 'denied').map((e) => e.portId);
    expect(denied).toEqual(expect.arrayContaining(['serio0', '1-9', '1-11']));
    expect(before.find((e) => e.portId === 'serio0')?.reason).toMatch(/^deny: built into the machine/);

    const answered = await client.post(`/v1/asks/${asks[0].id}/answer`, { verdict: 'allow' });
    expect(answered.status).toBe(200);
    await until('the answer audited', async () => (await audit(client)).some((e) => e.action === 'answer'));
    const answer = (await audit(client)).find((e) => e.action === 'answer')!;
    expect(answer).toMatchObject({ portId: 'i2c-DLL07D1_01', frontend: 'dom0', outcome: 'ok' });
    expect((await client.get<{ asks: AskRow[] }>('/v1/asks')).body.asks).toEqual([]);
  } finally {
    await daemon.stop();
  }
});

it('a question left unanswered denies at its timeout, and says so in the audit', async () => {
  const { daemon, client } = await start(1);
  try {
    await until('the timeout audited', async () => (await audit(client)).some((e) => e.action === 'answer'), 10_000);
    const answer = (await audit(client)).find((e) => e.action === 'answer')!;
    expect(answer).toMatchObject({ portId: 'i2c-DLL07D1_01', outcome: 'denied', actor: 'timeout' });
    expect(answer.reason).toMatch(/^deny \(no answer before the timeout\)/);
  } finally {
    await daemon.stop();
  }
});

it('a policy with an error denies every input call, as qrexec does', async () => {
  const { daemon, client } = await start(60, 'qubes.InputMouse * sys-usb dom0 allow\nqubes.InputKeyboard * sys-usb\n');
  try {
    await until('decisions', async () => (await audit(client)).length >= 5);
    const rows = await audit(client);
    expect(rows.every((e) => e.outcome === 'denied')).toBe(true);
    expect((await client.get<{ asks: AskRow[] }>('/v1/asks')).body.asks).toEqual([]);
  } finally {
    await daemon.stop();
  }
});
