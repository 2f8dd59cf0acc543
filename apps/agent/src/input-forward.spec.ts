import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InputForward } from './input-forward';

// The agent's side of the input proxy, on a stand-in event node: a character device with the
// major:minor devgated listed (mknod; this host has no input subsystem), read by a stand-in for `cat`
// that writes recorded `struct input_event`s, as the kernel hands them out, then waits to be stopped.
jest.setTimeout(30_000);

let dir: string;
const EVENT_BYTES = 24;

function inputEvent(type: number, code: number, value: number): Buffer {
  const bytes = Buffer.alloc(EVENT_BYTES);
  bytes.writeUInt16LE(type, 16);
  bytes.writeUInt16LE(code, 18);
  bytes.writeInt32LE(value, 20);
  return bytes;
}

/** A reader that writes `events`, then fails saying `exit`, or waits to be stopped. */
function fakeCat(events: Buffer, options: { exit?: string } = {}): string {
  const data = path.join(dir, 'events.bin');
  fs.writeFileSync(data, events);
  const script = path.join(dir, 'cat');
  const end = options.exit ? `echo "${options.exit}" >&2; exit 1` : 'exec sleep 30';
  fs.writeFileSync(script, `#!/bin/sh\ncat ${data}\n${end}\n`, { mode: 0o755 });
  return script;
}

function forward(cat: string, majorMinor = '1:3', sent: unknown[][] = []) {
  return {
    sent,
    forward: new InputForward(
      { id: 'i0123456789ab', nodes: [{ devname: 'event7', majorMinor }] },
      { inputDir: dir, cat, send: (events) => sent.push([...events]) },
    ),
  };
}

function ended(f: InputForward): Promise<string> {
  return new Promise((resolve) => f.once('ended', resolve));
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'input-forward-'));
  execFileSync('mknod', [path.join(dir, 'event7'), 'c', '1', '3']);
});

afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('InputForward', () => {
  it('sends whole frames with the node index, at most one message per interval; holds back a frame not ended', async () => {
    const events = Buffer.concat([
      inputEvent(2, 0, 7),
      inputEvent(0, 0, 0),
      inputEvent(2, 1, -3),
      inputEvent(0, 0, 0),
      inputEvent(2, 0, 99), // no SYN_REPORT after it: not a whole frame
    ]);
    const { forward: f, sent } = forward(fakeCat(events));
    f.start();
    const started = Date.now();
    while (sent.flat().length < 4 && Date.now() - started < 10_000) await new Promise((r) => setTimeout(r, 5));
    // The first frame goes at once; the next waits for the interval (16 ms), in one message.
    expect(sent[0]).toEqual([
      [0, 2, 0, 7],
      [0, 0, 0, 0],
    ]);
    expect(sent.flat()).toEqual([
      [0, 2, 0, 7],
      [0, 0, 0, 0],
      [0, 2, 1, -3],
      [0, 0, 0, 0],
    ]);
    const done = ended(f);
    f.end('stopped by devgated');
    expect(await done).toBe('stopped by devgated');
  });

  it('ends when the node goes, saying why', async () => {
    const { forward: f } = forward(fakeCat(inputEvent(0, 0, 0), { exit: 'cat: /dev/input/event7: No such device' }));
    const done = ended(f);
    f.start();
    expect(await done).toBe(`${path.join(dir, 'event7')} went (cat: /dev/input/event7: No such device)`);
  });

  it('refuses a node that is not the one listed, or not an event node, before reading anything', () => {
    expect(() => forward('/nonexistent', '13:64').forward.start()).toThrow(
      expect.objectContaining({ code: 'DEVICE_CHANGED', message: `${path.join(dir, 'event7')} is 1:3, not 13:64` }),
    );
    const notEvent = new InputForward(
      { id: 'i0123456789ab', nodes: [{ devname: '../event7', majorMinor: '1:3' }] },
      { inputDir: dir, cat: '/nonexistent', send: () => undefined },
    );
    expect(() => notEvent.start()).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }));
    fs.writeFileSync(path.join(dir, 'event8'), '');
    const regular = new InputForward(
      { id: 'i0123456789ab', nodes: [{ devname: 'event8', majorMinor: '1:3' }] },
      { inputDir: dir, cat: '/nonexistent', send: () => undefined },
    );
    expect(() => regular.start()).toThrow(expect.objectContaining({ code: 'DEVICE_CHANGED' }));
  });
});
