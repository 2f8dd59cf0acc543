/**
 * Input given to a QEMU VM's emulated keyboard, mouse or tablet: the arguments of QMP
 * `input-send-event`, whose events QEMU routes to the VM's active input devices as if a person used its
 * window. Shared by the connectors that reach a QEMU monitor (devgate's own QMP, libvirt's
 * `qemu-monitor-command`). The events come from another domain (a USB VM's device, through devgated's
 * input proxy), so each is checked again here: a key name of QEMU's form, a button of the list, an
 * axis, a bounded value.
 */
import { DriverContractError } from './errors.js';
import { type InjectedInputEvent } from './plugin-api.js';

const KEY_NAME = /^[a-z0-9_]{1,24}$/;
const BUTTONS = new Set(['left', 'right', 'middle', 'side', 'extra', 'wheel-up', 'wheel-down']);
/** QEMU's absolute axes run from 0 to this. */
export const ABS_MAX = 0x7fff;
/** Events per `input-send-event`: one message of a backend's agent at most. */
const MAX_EVENTS = 256;

/** The `events` argument of `input-send-event`. */
export function inputSendEventArgs(events: readonly InjectedInputEvent[]): Record<string, unknown>[] {
  if (events.length > MAX_EVENTS) throw new DriverContractError('input', `${events.length} input events at once`);
  return events.map((event) => {
    switch (event.kind) {
      case 'key':
        if (!KEY_NAME.test(event.key)) throw new DriverContractError('input', `key name '${event.key}'`);
        return { type: 'key', data: { down: event.down === true, key: { type: 'qcode', data: event.key } } };
      case 'btn':
        if (!BUTTONS.has(event.button)) throw new DriverContractError('input', `button '${event.button}'`);
        return { type: 'btn', data: { down: event.down === true, button: event.button } };
      case 'rel':
      case 'abs': {
        if (event.axis !== 'x' && event.axis !== 'y') throw new DriverContractError('input', `axis '${event.axis}'`);
        const [min, max] = event.kind === 'abs' ? [0, ABS_MAX] : [-0x7fff, 0x7fff];
        const value = Math.min(max, Math.max(min, Math.trunc(Number(event.value) || 0)));
        return { type: event.kind, data: { axis: event.axis, value } };
      }
      default:
        throw new DriverContractError('input', `input event kind '${(event as { kind: string }).kind}'`);
    }
  });
}
