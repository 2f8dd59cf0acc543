import { type RawInputEvent } from '@devgate/core';
import { type QubesInputService } from './input-class';
import { forwardedEvents } from './forwarded-events';

const ev = (node: string, type: number, code: number, value: number): RawInputEvent => ({ node, type, code, value });
const SYN = (node: string) => ev(node, 0, 0, 0);

describe('forwardedEvents: what a node allowed as one call may send', () => {
  const allowed = new Map<string, QubesInputService>([
    ['event3', 'qubes.InputKeyboard'],
    ['event4', 'qubes.InputMouse'],
    ['event5', 'qubes.InputTablet'],
  ]);

  it('gives a keyboard its keys by QEMU name, presses and releases, and drops auto-repeats', () => {
    // KEY_A down, repeat, up; KEY_ENTER; KEY_LEFTSHIFT; KEY_F12; KEY_KPENTER; KEY_LEFTMETA.
    const keys = [ev('event3', 1, 30, 1), ev('event3', 1, 30, 2), ev('event3', 1, 30, 0), SYN('event3')];
    keys.push(ev('event3', 1, 28, 1), ev('event3', 1, 42, 1), ev('event3', 1, 88, 1), ev('event3', 1, 96, 1));
    keys.push(ev('event3', 1, 125, 1));
    expect(forwardedEvents(keys, allowed)).toEqual([
      { kind: 'key', key: 'a', down: true },
      { kind: 'key', key: 'a', down: false },
      { kind: 'key', key: 'ret', down: true },
      { kind: 'key', key: 'shift', down: true },
      { kind: 'key', key: 'f12', down: true },
      { kind: 'key', key: 'kp_enter', down: true },
      { kind: 'key', key: 'meta_l', down: true },
    ]);
  });

  it('gives a mouse its moves, buttons and wheel steps', () => {
    const mouse = [ev('event4', 2, 0, 7), ev('event4', 2, 1, -3), ev('event4', 1, 0x110, 1), ev('event4', 2, 8, -2)];
    expect(forwardedEvents(mouse, allowed)).toEqual([
      { kind: 'rel', axis: 'x', value: 7 },
      { kind: 'rel', axis: 'y', value: -3 },
      { kind: 'btn', button: 'left', down: true },
      { kind: 'btn', button: 'wheel-down', down: true },
      { kind: 'btn', button: 'wheel-down', down: false },
      { kind: 'btn', button: 'wheel-down', down: true },
      { kind: 'btn', button: 'wheel-down', down: false },
    ]);
  });

  it('gives a tablet its positions and its touch as a left click', () => {
    const tablet = [ev('event5', 3, 0, 16000), ev('event5', 3, 1, 8000), ev('event5', 1, 0x14a, 1)];
    expect(forwardedEvents(tablet, allowed)).toEqual([
      { kind: 'abs', axis: 'x', value: 16000 },
      { kind: 'abs', axis: 'y', value: 8000 },
      { kind: 'btn', button: 'left', down: true },
    ]);
  });

  it('lets no node send what its call does not allow: a mouse cannot type, a keyboard cannot move', () => {
    const hostile = [
      ev('event4', 1, 30, 1), // a key from the mouse's node
      ev('event4', 3, 0, 100), // an absolute move from the mouse
      ev('event3', 2, 0, 50), // a move from the keyboard's node
      ev('event3', 1, 0x110, 1), // a click from the keyboard
      ev('event5', 2, 0, 5), // a relative move from the tablet
      ev('event5', 1, 30, 1), // a key from the tablet
      ev('event9', 1, 30, 1), // a node that was not allowed at all
      ev('event3', 1, 0x2ff, 1), // a code with no QEMU key
      ev('event3', 4, 4, 30), // EV_MSC scan codes
    ];
    expect(forwardedEvents(hostile, allowed)).toEqual([]);
  });

  it('bounds wheel steps per event', () => {
    expect(forwardedEvents([ev('event4', 2, 8, 1_000_000)], allowed)).toHaveLength(20);
  });
});
