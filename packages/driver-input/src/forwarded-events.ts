/**
 * What of a backend's input events reaches a frontend, and in which form: each event node passes
 * only the events of the call the policy allowed for it (a keyboard's keys for qubes.InputKeyboard,
 * a mouse's moves and buttons for InputMouse, a tablet's positions and touches for InputTablet), as
 * Qubes' receiving side does by giving its virtual device only that class's capabilities. So a USB VM
 * whose mouse was allowed cannot type through it, whatever its agent sends.
 *
 * Key codes are Linux's (linux/input-event-codes.h); key names are QEMU's (its QKeyCode). Keys with no
 * QEMU name are dropped, as are auto-repeats (the frontend's kernel repeats a key held down itself).
 */
import { type InjectedButton, type InjectedInputEvent, type RawInputEvent } from '@devgate/core';
import { type QubesInputService } from './input-class.js';

const EV_KEY = 1;
const EV_REL = 2;
const EV_ABS = 3;
const REL_X = 0;
const REL_Y = 1;
const REL_WHEEL = 8;
const ABS_X = 0;
const ABS_Y = 1;
/** Key codes below this are keyboard keys; from it on, buttons (BTN_MISC). */
const BTN_MISC = 0x100;

/** Linux key code -> QEMU key name, for the keys of ordinary keyboards. */
const KEY_NAMES: ReadonlyMap<number, string> = new Map([
  ...entries(1, ['esc', '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', 'minus', 'equal', 'backspace', 'tab']),
  ...entries(16, ['q', 'w', 'e', 'r', 't', 'y', 'u', 'i', 'o', 'p', 'bracket_left', 'bracket_right', 'ret', 'ctrl']),
  ...entries(30, ['a', 's', 'd', 'f', 'g', 'h', 'j', 'k', 'l', 'semicolon', 'apostrophe', 'grave_accent', 'shift']),
  ...entries(43, ['backslash', 'z', 'x', 'c', 'v', 'b', 'n', 'm', 'comma', 'dot', 'slash', 'shift_r']),
  ...entries(55, ['kp_multiply', 'alt', 'spc', 'caps_lock', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8', 'f9']),
  ...entries(68, ['f10', 'num_lock', 'scroll_lock', 'kp_7', 'kp_8', 'kp_9', 'kp_subtract', 'kp_4', 'kp_5', 'kp_6']),
  ...entries(78, ['kp_add', 'kp_1', 'kp_2', 'kp_3', 'kp_0', 'kp_decimal']),
  ...entries(86, ['less', 'f11', 'f12']),
  ...entries(96, ['kp_enter', 'ctrl_r', 'kp_divide', 'sysrq', 'alt_r']),
  ...entries(102, ['home', 'up', 'pgup', 'left', 'right', 'end', 'down', 'pgdn', 'insert', 'delete']),
  ...entries(113, ['audiomute', 'volumedown', 'volumeup', 'power', 'kp_equals']),
  [119, 'pause'],
  [121, 'kp_comma'],
  ...entries(125, ['meta_l', 'meta_r', 'compose']),
  [139, 'menu'],
  ...entries(183, ['f13', 'f14', 'f15', 'f16', 'f17', 'f18', 'f19', 'f20', 'f21', 'f22', 'f23', 'f24']),
  [210, 'print'],
]);

/** BTN_LEFT (0x110) and on; BTN_TOUCH (a tablet's or a touchscreen's contact) is a left click. */
const BUTTONS: ReadonlyMap<number, InjectedButton> = new Map([
  ...entries<InjectedButton>(0x110, ['left', 'right', 'middle', 'side', 'extra']),
  [0x14a, 'left'],
]);

function entries<T = string>(first: number, names: readonly T[]): [number, T][] {
  return names.map((name, i) => [first + i, name]);
}

/**
 * The events of one batch that may go, for the service each node was allowed as (nodes absent from
 * `allowed` send nothing).
 */
export function forwardedEvents(
  events: readonly RawInputEvent[],
  allowed: ReadonlyMap<string, QubesInputService>,
): InjectedInputEvent[] {
  const out: InjectedInputEvent[] = [];
  for (const { node, type, code, value } of events) {
    const service = allowed.get(node);
    if (service === undefined) continue;
    if (type === EV_KEY && value !== 2) {
      const down = value !== 0;
      if (service === 'qubes.InputKeyboard') {
        const key = code < BTN_MISC ? KEY_NAMES.get(code) : undefined;
        if (key) out.push({ kind: 'key', key, down });
      } else {
        const button = BUTTONS.get(code);
        if (button) out.push({ kind: 'btn', button, down });
      }
    } else if (type === EV_REL && service === 'qubes.InputMouse') {
      if (code === REL_X || code === REL_Y) out.push({ kind: 'rel', axis: code === REL_X ? 'x' : 'y', value });
      // A wheel step is a press and a release of QEMU's wheel button, one per step.
      if (code === REL_WHEEL) {
        const button = value > 0 ? 'wheel-up' : 'wheel-down';
        for (let step = 0; step < Math.min(Math.abs(value), 10); step++) {
          out.push({ kind: 'btn', button, down: true }, { kind: 'btn', button, down: false });
        }
      }
    } else if (type === EV_ABS && service === 'qubes.InputTablet' && (code === ABS_X || code === ABS_Y)) {
      out.push({ kind: 'abs', axis: code === ABS_X ? 'x' : 'y', value });
    }
  }
  return out;
}
