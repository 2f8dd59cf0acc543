/**
 * From udev's flags to what devgate shows and what Qubes' policy is about: the class of an event node
 * (keyboard, mouse, tablet, ...), the interface code it contributes (`iCCBB00`), and the Qubes input
 * service (`qubes.InputKeyboard`, `InputMouse`, `InputTablet`) that its events would travel through.
 */
import { type InterfaceCode, interfaceCode } from '@devgate/core';
import {
  ABS_X,
  ABS_Y,
  EV_REL,
  type InputCapabilities,
  type InputFlag,
  REL_X,
  REL_Y,
} from './parse-input-capabilities.js';

/** A device that can type is a keyboard, whatever else it is; pointers then in udev's order of precedence. */
export const INPUT_CLASSES = ['keyboard', 'tablet', 'touchpad', 'touchscreen', 'mouse', 'joystick', 'other'] as const;
export type InputClass = (typeof INPUT_CLASSES)[number];

/** The class byte of devgate's input interface codes: `i` + class + bus + `00`. */
const CLASS_CODES: Record<InputClass, number> = {
  other: 0x00,
  keyboard: 0x01,
  mouse: 0x02,
  tablet: 0x03,
  touchpad: 0x04,
  touchscreen: 0x05,
  joystick: 0x06,
};

/** Kernel BUS_* ids (linux/input.h) by the name devgate shows. */
const BUS_NAMES: Record<number, string> = {
  0x01: 'pci',
  0x03: 'usb',
  0x05: 'bluetooth',
  0x06: 'virtual',
  0x10: 'isa',
  0x11: 'ps2',
  0x12: 'xt',
  0x13: 'rs232',
  0x14: 'gameport',
  0x18: 'i2c',
  0x19: 'host',
  0x1c: 'spi',
  0x1d: 'rmi',
  0x1f: 'ishtp',
  0x20: 'amd-sfh',
};

export function busName(bustype: number): string {
  return BUS_NAMES[bustype] ?? (bustype === 0 ? 'unknown' : `bus-${bustype.toString(16).padStart(2, '0')}`);
}

function absolute(caps: InputCapabilities): boolean {
  return caps.abs.has(ABS_X) && caps.abs.has(ABS_Y);
}

function relative(caps: InputCapabilities): boolean {
  return caps.ev.has(EV_REL) && caps.rel.has(REL_X) && caps.rel.has(REL_Y);
}

/**
 * Every class an event node belongs to, most dangerous first. A mouse with absolute axes and no
 * relative ones (QEMU's usb-tablet, VMware's mouse) is a tablet, as Qubes' input trigger decides.
 */
export function classesOf(flags: ReadonlySet<InputFlag>, caps: InputCapabilities): InputClass[] {
  const found = new Set<InputClass>();
  if (flags.has('KEYBOARD')) found.add('keyboard');
  if (flags.has('TABLET') || flags.has('TABLET_PAD')) found.add('tablet');
  if (flags.has('TOUCHSCREEN')) found.add('touchscreen');
  if (flags.has('TOUCHPAD')) found.add('touchpad');
  if (flags.has('MOUSE') || flags.has('POINTINGSTICK')) {
    found.add(absolute(caps) && !relative(caps) ? 'tablet' : 'mouse');
  }
  if (flags.has('JOYSTICK')) found.add('joystick');
  if (found.size === 0) found.add('other');
  return INPUT_CLASSES.filter((c) => found.has(c));
}

/** The one class shown for a set of classes: the most dangerous. */
export function primaryClass(classes: Iterable<InputClass>): InputClass {
  const set = new Set(classes);
  return INPUT_CLASSES.find((c) => set.has(c)) ?? 'other';
}

/** `i` + class + bus + `00`: `i010300` a USB keyboard, `i041800` an I2C touchpad, `i001900` a power button. */
export function inputInterface(cls: InputClass, bustype: number): InterfaceCode {
  return interfaceCode('i', CLASS_CODES[cls], Math.min(bustype, 0xff), 0);
}

export type QubesInputService = 'qubes.InputKeyboard' | 'qubes.InputMouse' | 'qubes.InputTablet';

export const QUBES_INPUT_SERVICES: readonly QubesInputService[] = [
  'qubes.InputKeyboard',
  'qubes.InputMouse',
  'qubes.InputTablet',
];

/**
 * The service Qubes' input trigger (qubes-input-trigger, in the USB qube) starts for an event node,
 * or undefined when it forwards nothing (switches, joysticks, accelerometers):
 * tablet, touchscreen or touchpad without keys -> tablet; a mouse without keys -> tablet when absolute,
 * else mouse; keys without a mouse -> keyboard; keys and a mouse -> keyboard (its receiver takes both).
 */
export function qubesServiceOf(flags: ReadonlySet<InputFlag>, caps: InputCapabilities): QubesInputService | undefined {
  const key = flags.has('KEY') || flags.has('KEYBOARD');
  const mouse = flags.has('MOUSE');
  if ((flags.has('TABLET') || flags.has('TOUCHSCREEN') || flags.has('TOUCHPAD')) && !key) return 'qubes.InputTablet';
  if (mouse && !key) return absolute(caps) ? 'qubes.InputTablet' : 'qubes.InputMouse';
  if (key) return 'qubes.InputKeyboard';
  return undefined;
}
