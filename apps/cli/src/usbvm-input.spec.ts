import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { Devgated } from '@devgate/daemon';
import { defaultConfig } from '@devgate/service';
import { withLabGuest } from '@devgate/guest-lab';
import { until } from '@devgate/testkit';
import { runCaptured } from './test-io';

// Qubes' input proxy with real guests (TCG here): sys-usb (`devgate usbvm create --emulated`) has
// emulated USB input devices, `work` is the input target (inputTargets), devgated runs in this
// process with Qubes' installer defaults (mouse ask, keyboard deny, tablet deny). A keyboard sends
// nothing; a mouse raises one question that names it; after Allow, moves made on sys-usb's mouse
// (QMP input-send-event into sys-usb's QEMU, read by its kernel, then by devgate-agent from its
// evdev node) reach work's evdev; a question nobody answers denies at its timeout; all audited.
jest.setTimeout(600_000);

const ASK_TIMEOUT_S = 8;
let dir: string;
let registryFile: string;
let daemon: Devgated | undefined;

const devgate = (...argv: string[]) => runCaptured('devgate', argv);
const inWork = (script: string) => devgate('lab', 'exec', 'work', '--', 'sh', '-c', script);

interface AuditRow {
  action: string;
  portId?: string;
  frontend?: string;
  outcome: string;
  reason?: string;
}

const audit = () => daemon!.store.audit.query({}) as unknown as AuditRow[];
const inputDevices = () => daemon!.manager.list({ devclass: 'input', backend: 'sys-usb', includeHidden: true });
/** USB input devices of a class (sys-usb has its PS/2 keyboard too: built in, never forwarded). */
const inputOfClass = (inputClass: string) =>
  inputDevices().filter((d) => d.data['input-class'] === inputClass && d.data.bus === 'usb');

/** The event node of work's own mouse (QEMU's usb-mouse, plugged for the test). */
async function workMouseNode(): Promise<string> {
  const found = await inWork(
    'for e in /sys/class/input/event*; do grep -q "USB Mouse" $e/device/name && basename $e; done',
  );
  return found.out.trim().split('\n')[0];
}

/** Moves sys-usb's mouse right by `dx` (its QEMU's active pointer: the usb-mouse its kernel reads). */
async function moveSysUsbMouse(dx: number): Promise<void> {
  await withLabGuest('sys-usb', { registryFile }, (guest) =>
    guest.qmp.execute('input-send-event', { events: [{ type: 'rel', data: { axis: 'x', value: dx } }] }),
  );
}

/** Decodes `od -An -v -tx1 -w24` of evdev reads: [type, code, value] each. */
function decodeEvents(od: string): [number, number, number][] {
  return od
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const bytes = Buffer.from(line.trim().split(/\s+/).join(''), 'hex');
      return [bytes.readUInt16LE(16), bytes.readUInt16LE(18), bytes.readInt32LE(20)];
    });
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usbvm-input-'));
  registryFile = path.join(dir, 'domains.json');
  process.env.DEVGATE_DOMAINS = registryFile;
  process.env.XDG_RUNTIME_DIR = path.join(dir, 'run');
  // No input policy on this host: Qubes' installer defaults apply.
  process.env.DEVGATE_INPUT_POLICY = path.join(dir, 'no-policy.d');
  const [usbvm, work] = await Promise.all([
    devgate('usbvm', 'create', '--emulated'),
    devgate('lab', 'up', '--os', 'work'),
  ]);
  expect(usbvm).toMatchObject({ code: 0, err: '' });
  expect(work).toMatchObject({ code: 0, err: '' });
  const socket = path.join(dir, 'devgate.sock');
  process.env.DEVGATE_SOCKET = socket;
  daemon = await Devgated.start(
    {
      ...defaultConfig(),
      socket,
      stateDir: path.join(dir, 'state'),
      domains: registryFile,
      access: { users: [], groups: [] },
      askTimeoutSeconds: ASK_TIMEOUT_S,
      inputTargets: { 'sys-usb': 'work' },
    },
    pino({ level: 'silent' }),
  );
});

afterAll(async () => {
  if (fs.existsSync(registryFile) && fs.readFileSync(registryFile, 'utf8').includes('sys-usb')) {
    const agentLog = await devgate('lab', 'exec', 'sys-usb', '--', 'sh', '-c', 'tail -n 30 /run/devgate-agent.log');
    process.stdout.write(`sys-usb agent log:\n${agentLog.out}${agentLog.err}\n`);
  }
  await daemon?.stop();
  await devgate('lab', 'down');
  for (const name of ['DEVGATE_DOMAINS', 'DEVGATE_SOCKET', 'XDG_RUNTIME_DIR', 'DEVGATE_INPUT_POLICY']) {
    delete process.env[name];
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

describe("Qubes' input proxy: input devices of sys-usb, and work as the input target", () => {
  it('a keyboard in sys-usb is denied by the defaults, audited, and nothing of it is forwarded', async () => {
    expect(await devgate('lab', 'plug', 'sys-usb', 'usb-kbd', '--id', 'kbd1')).toMatchObject({ code: 0 });
    await until('the keyboard in devgated', () => inputOfClass('keyboard').length === 1, 30_000);
    const [keyboard] = inputOfClass('keyboard');
    // Decided again once its event node is there (it may be listed a moment before): by policy.
    const byPolicy = (e: AuditRow) =>
      e.action === 'input-policy' && e.portId === keyboard.port.portId && /qubes\.InputKeyboard/.test(e.reason ?? '');
    await until('the keyboard denied by policy', () => audit().some(byPolicy), 10_000);
    expect(audit().find(byPolicy)).toMatchObject({
      frontend: 'work',
      outcome: 'denied',
      reason: expect.stringMatching(/^deny: qubes\.InputKeyboard \(event\d+\): /),
    });
    expect(audit().filter((e) => e.action === 'input-forward')).toEqual([]);
    expect(daemon!.asks.list()).toEqual([]);
  });

  it('a mouse raises one question naming it; after Allow its moves reach the evdev of work', async () => {
    expect(await devgate('lab', 'plug', 'sys-usb', 'usb-mouse', '--id', 'mouse1')).toMatchObject({ code: 0 });
    expect(await devgate('lab', 'plug', 'work', 'usb-mouse', '--id', 'wmouse')).toMatchObject({ code: 0 });
    await until('the question', () => daemon!.asks.list().length > 0, 30_000);
    const [mouse] = inputOfClass('mouse');
    const asks = daemon!.asks.list();
    expect(asks).toHaveLength(1);
    expect(asks[0]).toMatchObject({ device: `sys-usb:${mouse.port.portId}`, candidates: ['work'] });
    expect(asks[0].reason).toContain('QEMU USB Mouse');
    expect(asks[0].reason).toContain('0627:0001');
    expect(asks[0].reason).toContain('mouse');

    expect(await devgate('ask', 'answer', asks[0].id, 'allow')).toMatchObject({ code: 0, err: '' });
    let node = '';
    await until('work to see its mouse', async () => (node = await workMouseNode()) !== '', 30_000);
    // Read work's mouse while sys-usb's mouse moves: each move is 7 to the right.
    const reading = inWork(`timeout 60 dd if=/dev/input/${node} bs=24 count=4 2>/dev/null | od -An -v -tx1 -w24`);
    let read: Awaited<typeof reading> | undefined;
    void reading.then((result) => (read = result));
    await until(
      "a move of sys-usb's mouse in work",
      async () => {
        if (read) return true;
        await moveSysUsbMouse(7);
        return false;
      },
      60_000,
    );
    const events = decodeEvents(read!.out);
    // EV_REL REL_X 7, then EV_SYN SYN_REPORT.
    expect(events).toContainEqual([2, 0, 7]);
    expect(events).toContainEqual([0, 0, 0]);
    const entries = audit().filter((e) => e.portId === mouse.port.portId);
    expect(entries).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ action: 'input-policy', outcome: 'ok', reason: expect.stringMatching(/^ask: /) }),
        expect.objectContaining({ action: 'answer', frontend: 'work', outcome: 'ok' }),
      ]),
    );
  });

  it('pulled out of sys-usb: the forward ends, audited', async () => {
    const [mouse] = inputOfClass('mouse');
    expect(await devgate('lab', 'unplug', 'sys-usb', 'mouse1')).toMatchObject({ code: 0 });
    await until('the mouse gone', () => inputOfClass('mouse').length === 0, 10_000);
    await until(
      'the end of the forward in the audit',
      () => audit().some((e) => e.action === 'input-forward' && e.portId === mouse.port.portId),
      10_000,
    );
  });

  it('a question nobody answers denies at its timeout, audited; a tablet is denied by the defaults', async () => {
    expect(await devgate('lab', 'plug', 'sys-usb', 'usb-mouse', '--id', 'mouse2')).toMatchObject({ code: 0 });
    expect(await devgate('lab', 'plug', 'sys-usb', 'usb-tablet', '--id', 'tablet1')).toMatchObject({ code: 0 });
    await until('the question', () => daemon!.asks.list().length === 1, 30_000);
    const [mouse] = inputOfClass('mouse');
    const answered = await until(
      'the timeout',
      () =>
        audit().some(
          (e) => e.action === 'answer' && e.portId === mouse.port.portId && e.reason?.includes('before the timeout'),
        ),
      (ASK_TIMEOUT_S + 30) * 1000,
    );
    expect(answered).toBeGreaterThan(1000);
    expect(audit().find((e) => e.action === 'answer' && e.portId === mouse.port.portId)).toMatchObject({
      outcome: 'denied',
    });
    await until('the tablet in devgated', () => inputOfClass('tablet').length === 1, 30_000);
    const [tablet] = inputOfClass('tablet');
    await until(
      'the tablet denied',
      () =>
        audit().some((e) => e.action === 'input-policy' && e.portId === tablet.port.portId && e.outcome === 'denied'),
      10_000,
    );
    expect(daemon!.asks.list()).toEqual([]);
  });
});
