import { Subject } from 'rxjs';
import {
  type DeviceInfo,
  type DeviceManager,
  Errors,
  type InjectedInputEvent,
  type RawInputEvent,
} from '@devgate/core';
import { type InputForwardEnd, forwardInput } from './input-forwarding';

// The moving half of the input proxy against a stand-in manager: what reaches the frontend, what is
// dropped and said once, and what ends the forward.

/** A mouse (event4) and a keyboard (event3) in one device, as the input driver lists it. */
const device = {
  port: { devclass: 'input', backend: 'sys-usb', portId: '1-2' },
  deviceId: 'x',
  data: { 'event-nodes': 'event3,event4', 'qubes-calls': 'qubes.InputKeyboard,qubes.InputMouse' },
} as unknown as DeviceInfo;

const move = (dx: number): RawInputEvent[] => [
  { node: 'event4', type: 2, code: 0, value: dx },
  { node: 'event4', type: 0, code: 0, value: 0 },
];
const keyA: RawInputEvent[] = [{ node: 'event3', type: 1, code: 30, value: 1 }];
const settle = () => new Promise((resolve) => setImmediate(resolve));

function harness(inject: (events: readonly InjectedInputEvent[]) => Promise<void>) {
  const frames = new Subject<readonly RawInputEvent[]>();
  const asked: string[][] = [];
  const injected: InjectedInputEvent[][] = [];
  const reports: InputForwardEnd[] = [];
  const manager = {
    inputEvents: (_device: DeviceInfo, nodes: readonly string[]) => {
      asked.push([...nodes]);
      return frames;
    },
    injectInput: async (_frontend: string, events: readonly InjectedInputEvent[]) => {
      await inject(events);
      injected.push([...events]);
    },
  } as unknown as DeviceManager;
  return { frames, asked, injected, reports, forward: forwardInput(manager, (end) => reports.push(end)) };
}

describe('forwardInput', () => {
  it('reads only the allowed nodes, and gives the frontend what their calls allow', async () => {
    const h = harness(async () => undefined);
    const forward = h.forward(device, 'work', ['event4']);
    expect(h.asked).toEqual([['event4']]);
    h.frames.next([...keyA, ...move(5)]);
    await settle();
    expect(h.injected).toEqual([[{ kind: 'rel', axis: 'x', value: 5 }]]);
    // devgated stopping: the forward ends with it, and nothing is reported.
    forward.stop('proxy-stopped');
    h.frames.next(move(6));
    await settle();
    expect(h.injected).toHaveLength(1);
    expect(h.reports).toEqual([]);
  });

  it('drops what a frontend cannot take for a while, says so once per cause, and goes on', async () => {
    let refuse: Error | undefined = Errors.domainNotRunning({ domain: 'work', role: 'frontend' });
    const h = harness(async () => {
      if (refuse) throw refuse;
    });
    h.forward(device, 'work', ['event3', 'event4']);
    h.frames.next(move(1));
    h.frames.next(move(2));
    await settle();
    expect(h.reports.map((r) => r.reason)).toEqual([expect.stringMatching(/^dropped: DG_DOMAIN_NOT_RUNNING: /)]);
    refuse = undefined;
    h.frames.next(move(3));
    await settle();
    expect(h.injected).toEqual([[{ kind: 'rel', axis: 'x', value: 3 }]]);
    refuse = Errors.domainNotRunning({ domain: 'work', role: 'frontend' });
    h.frames.next(move(4));
    await settle();
    expect(h.reports).toHaveLength(2);
  });

  it('ends, audited, when the frontend has no input path, and when the backend stops sending', async () => {
    const none = harness(async () => {
      throw Errors.noConnector({ domain: 'work' });
    });
    none.forward(device, 'work', ['event4']);
    none.frames.next(move(1));
    await settle();
    expect(none.reports).toEqual([
      expect.objectContaining({ outcome: 'error', reason: expect.stringMatching(/^DG_NO_CONNECTOR: /) }),
    ]);
    const done = harness(async () => undefined);
    done.forward(device, 'work', ['event4']);
    done.frames.complete();
    expect(done.reports).toEqual([
      expect.objectContaining({ outcome: 'ok', reason: 'sys-usb stopped sending its events' }),
    ]);
  });

  it('ends, audited once, when its device went or changed, whoever noticed first', async () => {
    // Stopped by the proxy after the device went, before the backend said anything.
    const first = harness(async () => undefined);
    first.forward(device, 'work', ['event4']).stop('device-went');
    first.frames.complete();
    expect(first.reports).toEqual([{ device, frontend: 'work', outcome: 'ok', reason: 'sys-usb:1-2 went' }]);
    // The backend said its events ended first; then the proxy stopped it: one report, the backend's.
    const second = harness(async () => undefined);
    const ended = second.forward(device, 'work', ['event4']);
    second.frames.complete();
    ended.stop('device-went');
    expect(second.reports).toEqual([
      { device, frontend: 'work', outcome: 'ok', reason: 'sys-usb stopped sending its events' },
    ]);
    // Its event node went before the device did (a device being pulled): decided again, which ends it.
    const third = harness(async () => undefined);
    third.forward(device, 'work', ['event4']).stop('decided-again');
    expect(third.reports).toEqual([
      { device, frontend: 'work', outcome: 'ok', reason: 'sys-usb:1-2 changed: decided again' },
    ]);
  });

  it('says why when the backend cannot send at all', () => {
    const manager = {
      inputEvents: () => {
        throw Errors.noInputPath({ device: 'sys-usb:1-2', reason: 'a recording' });
      },
    } as unknown as DeviceManager;
    const reports: InputForwardEnd[] = [];
    forwardInput(manager, (end) => reports.push(end))(device, 'work', ['event4']).stop('proxy-stopped');
    expect(reports).toEqual([expect.objectContaining({ reason: expect.stringMatching(/^DG_NO_INPUT_PATH: /) })]);
  });
});
