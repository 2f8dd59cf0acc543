import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Subscription, firstValueFrom, filter, take, timeout } from 'rxjs';
import { type DeviceInfo, HostTree, type RawInputEvent, recordOf } from '@devgate/core';
import { type AgentIncident, AgentSource } from './agent-source';
import { AgentViolation, parseAgentMessage } from './parse-agent-message';
import { type HostRequest } from './protocol';
import { FakeAgent } from './testing/fake-agent';

// Input forwarding from a backend VM's agent (Qubes' input proxy), against a test double of the
// agent: what devgated asks for, what it takes, and what a hostile agent cannot do with it.
jest.setTimeout(30_000);

const MOUSE_NODE = '/devices/pci0000:00/0000:00:03.0/usb1/1-1/1-1:1.0/0003:0627:0001.0001/input/input5/event3';
const tree = new HostTree([recordOf(MOUSE_NODE, 'input', { MAJOR: '13', MINOR: '67', DEVNAME: '/dev/input/event3' })]);
const mouse = {
  port: { devclass: 'input', backend: 'sys-usb', portId: '1-1' },
  deviceId: '0627:0001::i030102',
  data: { 'event-nodes': 'event3', 'event-devices': '13:67' },
} as unknown as DeviceInfo;

let dir: string;
let fake: FakeAgent;
let source: AgentSource;
let trees: Subscription;
let incidents: AgentIncident[];

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'agent-input-'));
  fake = await FakeAgent.listen(path.join(dir, 'agent.sock'));
  source = new AgentSource({ backend: 'sys-usb', control: fake.path, cutOffBackoffMs: 60_000 });
  incidents = [];
  source.incidents$.subscribe((incident) => incidents.push(incident));
  trees = source.trees$.subscribe();
  await fake.connection();
  fake.hello([], ['input']);
  fake.tree(tree);
  await source.whenReady(5_000);
});

afterEach(async () => {
  trees.unsubscribe();
  source.dispose();
  await fake.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

type Forward = Extract<HostRequest, { op: 'input-forward' }>;

/** Subscribes to the mouse's events; resolves with the forward devgated asked for (the fake says ok). */
async function forwardMouse(received: RawInputEvent[][]): Promise<{ request: Forward; subscription: Subscription }> {
  const subscription = source.inputEvents(mouse, ['event3']).subscribe({
    next: (batch) => received.push([...batch]),
    error: () => undefined,
  });
  const request = (await fake.waitForRequest('input-forward')) as Forward;
  return { request, subscription };
}

function nextBatch(received: RawInputEvent[][], count: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () =>
      received.length >= count
        ? resolve()
        : Date.now() - started > 5_000
          ? reject(new Error('no input'))
          : setTimeout(check, 5);
    check();
  });
}

describe('AgentSource.inputEvents', () => {
  it('asks for the listed node with its major:minor, passes its frames on, and stops it when unsubscribed', async () => {
    const received: RawInputEvent[][] = [];
    const { request, subscription } = await forwardMouse(received);
    expect(request.forward.nodes).toEqual([{ devname: 'event3', majorMinor: '13:67' }]);
    expect(request.forward.id).toMatch(/^i[0-9a-f]{12}$/);
    fake.send({
      v: 1,
      type: 'input',
      forward: request.forward.id,
      events: [
        [0, 2, 0, 7],
        [0, 0, 0, 0],
      ],
    });
    await nextBatch(received, 1);
    expect(received[0]).toEqual([
      { node: 'event3', type: 2, code: 0, value: 7 },
      { node: 'event3', type: 0, code: 0, value: 0 },
    ]);
    subscription.unsubscribe();
    const stop = await fake.waitForRequest('input-stop');
    expect(stop).toMatchObject({ forward: request.forward.id });
    // Sent before the agent knew: dropped, not a violation.
    fake.send({ v: 1, type: 'input', forward: request.forward.id, events: [[0, 2, 0, 7]] });
    fake.send({ v: 1, type: 'input', forward: 'i000000000000', events: [[0, 2, 0, 7]] });
    // A new forward's frame comes after them, so they were read when it arrives.
    fake.requests.splice(0);
    const later: RawInputEvent[][] = [];
    const next = await forwardMouse(later);
    fake.send({ v: 1, type: 'input', forward: next.request.forward.id, events: [[0, 2, 1, -3]] });
    await nextBatch(later, 1);
    next.subscription.unsubscribe();
    expect(received).toHaveLength(1);
    expect(incidents.filter((i) => i.type === 'cut-off')).toEqual([]);
  });

  it('refuses a node that is not the one listed, before asking the agent', async () => {
    const changed = { ...mouse, data: { 'event-nodes': 'event3', 'event-devices': '13:68' } } as DeviceInfo;
    const error = await firstValueFrom(source.inputEvents(changed, ['event3'])).catch((e: Error) => e);
    expect(error).toMatchObject({ code: 'DG_DEVICE_CHANGED' });
    const unlisted = await firstValueFrom(source.inputEvents(mouse, ['event4'])).catch((e: Error) => e);
    expect(unlisted).toMatchObject({ code: 'DG_DEVICE_CHANGED' });
  });

  it("completes when the agent says the device went; errors with the agent's refusal", async () => {
    const done = new Promise<string>((resolve) =>
      source.inputEvents(mouse, ['event3']).subscribe({
        complete: () => resolve('complete'),
        error: (e: Error) => resolve(e.message),
      }),
    );
    const request = (await fake.waitForRequest('input-forward')) as Forward;
    fake.send({ v: 1, type: 'input-ended', forward: request.forward.id, reason: 'event3 went' });
    expect(await done).toBe('complete');

    fake.requests.splice(0);
    fake.autoReply = false;
    const refused = firstValueFrom(source.inputEvents(mouse, ['event3'])).catch((e: Error) => e);
    const second = await fake.waitForRequest('input-forward');
    fake.reply(second.id, false, { code: 'DEVICE_CHANGED', message: '/dev/input/event3 is 13:68' });
    expect(await refused).toMatchObject({ code: 'DG_AGENT_REFUSED' });
  });

  it('cuts off an agent that names a node beyond the forward', async () => {
    const { request } = await forwardMouse([]);
    fake.send({ v: 1, type: 'input', forward: request.forward.id, events: [[1, 2, 0, 7]] });
    const cut = await firstValueFrom(
      source.incidents$.pipe(
        filter((i) => i.type === 'cut-off'),
        take(1),
        timeout(5_000),
      ),
    );
    expect(cut).toMatchObject({ code: 'DG_AGENT_VIOLATION', reason: expect.stringContaining('node 1') });
  });
});

describe('parseAgentMessage: input', () => {
  const bad = [
    ['an unknown field', { v: 1, type: 'input', forward: 'i0123456789ab', events: [[0, 1, 30, 1]], node: 'x' }],
    ['a forward id of another form', { v: 1, type: 'input', forward: '../x', events: [[0, 1, 30, 1]] }],
    ['no events', { v: 1, type: 'input', forward: 'i0123456789ab', events: [] }],
    ['an event type beyond EV_MAX', { v: 1, type: 'input', forward: 'i0123456789ab', events: [[0, 32, 0, 1]] }],
    ['a code beyond KEY_MAX', { v: 1, type: 'input', forward: 'i0123456789ab', events: [[0, 1, 0x300, 1]] }],
    ['a value beyond 32 bits', { v: 1, type: 'input', forward: 'i0123456789ab', events: [[0, 2, 0, 2 ** 31]] }],
    ['a fraction', { v: 1, type: 'input', forward: 'i0123456789ab', events: [[0, 2, 0, 0.5]] }],
    ['three numbers', { v: 1, type: 'input', forward: 'i0123456789ab', events: [[0, 2, 0]] }],
    ['a node index out of bounds', { v: 1, type: 'input', forward: 'i0123456789ab', events: [[16, 2, 0, 1]] }],
    ['too many events', { v: 1, type: 'input', forward: 'i0123456789ab', events: Array(257).fill([0, 2, 0, 1]) }],
    ['an unbounded reason', { v: 1, type: 'input-ended', forward: 'i0123456789ab', reason: 'x'.repeat(257) }],
  ] as const;
  it.each(bad)('refuses %s', (_what, message) => {
    expect(() => parseAgentMessage(JSON.stringify(message))).toThrow(AgentViolation);
  });

  it('takes whole frames with negative moves', () => {
    const line = JSON.stringify({
      v: 1,
      type: 'input',
      forward: 'i0123456789ab',
      events: [
        [0, 2, 1, -2147483648],
        [0, 0, 0, 0],
      ],
    });
    expect(parseAgentMessage(line)).toMatchObject({
      type: 'input',
      events: [
        [0, 2, 1, -2147483648],
        [0, 0, 0, 0],
      ],
    });
  });
});
