/**
 * What an input device can do, read from the kernel's capability bitmaps, and what udev's `input_id`
 * builtin concludes from them (systemd `src/udev/udev-builtin-input_id.c`; facts in
 * shared/reference/input-pci.md A4). The bitmaps are untrusted text from a backend: a word that does not
 * parse is ignored (as udev ignores it), and no more words are read than the kernel can write.
 *
 * The kernel prints a bitmap as hex words, most significant first, one word per `unsigned long`, each
 * without zero padding (`KEY=e520 10000 0 0 0 0`), in sysfs (`capabilities/key`, `properties`) and in
 * the input device's uevent (`KEY=`, `PROP=`). The word size is the kernel's: 64 bits on every machine
 * recorded here; a word longer than 8 digits proves it, and the modalias (which lists key codes
 * independently of the word size) decides between 32 and 64 when the words alone cannot.
 */
import { type RawDeviceRecord } from '@devgate/core';

// linux/input-event-codes.h
export const EV_KEY = 0x01;
export const EV_REL = 0x02;
export const EV_ABS = 0x03;
export const EV_SW = 0x05;
const EV_MAX = 0x1f;
export const ABS_X = 0x00;
export const ABS_Y = 0x01;
const ABS_Z = 0x02;
const ABS_RX = 0x03;
const ABS_PRESSURE = 0x18;
const ABS_MT_SLOT = 0x2f;
const ABS_MT_POSITION_X = 0x35;
const ABS_MT_POSITION_Y = 0x36;
const ABS_MAX = 0x3f;
export const REL_X = 0x00;
export const REL_Y = 0x01;
const REL_HWHEEL = 0x06;
const REL_WHEEL = 0x08;
const REL_MAX = 0x0f;
const INPUT_PROP_DIRECT = 0x01;
const INPUT_PROP_POINTING_STICK = 0x05;
const INPUT_PROP_ACCELEROMETER = 0x06;
const INPUT_PROP_MAX = 0x1f;
const KEY_MAX = 0x2ff;
const BTN_MISC = 0x100;
const BTN_0 = 0x100;
const BTN_1 = 0x101;
const BTN_MOUSE = 0x110;
const BTN_JOYSTICK = 0x120;
const BTN_DIGI = 0x140;
const BTN_TOOL_PEN = 0x140;
const BTN_TOOL_FINGER = 0x145;
const BTN_TOUCH = 0x14a;
const BTN_STYLUS = 0x14b;
const KEY_OK = 0x160;
const BTN_DPAD_UP = 0x220;
const BTN_DPAD_RIGHT = 0x223;
const KEY_ALS_TOGGLE = 0x230;
const BTN_TRIGGER_HAPPY = 0x2c0;
const BTN_TRIGGER_HAPPY40 = 0x2e7;
/** Keys that make a "joystick" a keyboard (KEY_LEFTCTRL, CAPSLOCK, NUMLOCK, INSERT, MUTE, CALC, FILE, MAIL, PLAYPAUSE, BRIGHTNESSDOWN). */
const WELL_KNOWN_KEYBOARD_KEYS = [29, 58, 69, 110, 113, 140, 144, 155, 164, 224];
/** The first key the kernel lists in an input modalias (KEY_MIN_INTERESTING = KEY_MUTE). */
const KEY_MIN_INTERESTING = 0x71;
export const BUS_USB = 0x03;
export const BUS_I2C = 0x18;

/** The set bits of one capability bitmap. */
export class Bitmap {
  private constructor(private readonly bits: ReadonlySet<number>) {}

  static readonly EMPTY = new Bitmap(new Set());

  /**
   * Parses the kernel's text. Words beyond what `maxBit` needs are ignored, and so is any word that is
   * not hex or is longer than the word size (udev's get_cap_mask does the same).
   */
  static parse(text: string | undefined, wordBits: 32 | 64, maxBit: number): Bitmap {
    if (text === undefined) return Bitmap.EMPTY;
    const words = text.trim().split(/\s+/).filter(Boolean).reverse();
    const maxWords = Math.floor(maxBit / wordBits) + 1;
    const bits = new Set<number>();
    words.slice(0, maxWords).forEach((word, index) => {
      if (!/^[0-9a-fA-F]+$/.test(word)) return;
      const digits = word.replace(/^0+(?=.)/, '');
      if (digits.length > wordBits / 4) return;
      for (let d = 0; d < digits.length; d++) {
        const nibble = parseInt(digits[digits.length - 1 - d], 16);
        for (let b = 0; b < 4; b++) if (nibble & (1 << b)) bits.add(index * wordBits + d * 4 + b);
      }
    });
    return new Bitmap(bits);
  }

  static of(...bits: number[]): Bitmap {
    return new Bitmap(new Set(bits));
  }

  has(bit: number): boolean {
    return this.bits.has(bit);
  }

  /** Whether any bit in [from, to) is set. */
  any(from: number, to: number): boolean {
    for (const bit of this.bits) if (bit >= from && bit < to) return true;
    return false;
  }

  count(from: number, to: number): number {
    let n = 0;
    for (const bit of this.bits) if (bit >= from && bit < to) n++;
    return n;
  }

  get size(): number {
    return this.bits.size;
  }

  toArray(): number[] {
    return [...this.bits].sort((a, b) => a - b);
  }
}

export interface InputCapabilities {
  readonly ev: Bitmap;
  readonly key: Bitmap;
  readonly rel: Bitmap;
  readonly abs: Bitmap;
  readonly props: Bitmap;
  /** BUS_* from the device's id (`id/bustype`, or the first field of PRODUCT). */
  readonly bustype: number;
}

/** udev's ID_INPUT_* names, without the prefix. */
export type InputFlag =
  | 'KEY'
  | 'KEYBOARD'
  | 'MOUSE'
  | 'POINTINGSTICK'
  | 'TOUCHPAD'
  | 'TOUCHSCREEN'
  | 'TABLET'
  | 'TABLET_PAD'
  | 'JOYSTICK'
  | 'ACCELEROMETER'
  | 'SWITCH';

export const INPUT_FLAGS: readonly InputFlag[] = [
  'KEY',
  'KEYBOARD',
  'MOUSE',
  'POINTINGSTICK',
  'TOUCHPAD',
  'TOUCHSCREEN',
  'TABLET',
  'TABLET_PAD',
  'JOYSTICK',
  'ACCELEROMETER',
  'SWITCH',
];

const BITMAP_SOURCES = {
  ev: { attribute: 'capabilities/ev', property: 'EV', max: EV_MAX },
  key: { attribute: 'capabilities/key', property: 'KEY', max: KEY_MAX },
  rel: { attribute: 'capabilities/rel', property: 'REL', max: REL_MAX },
  abs: { attribute: 'capabilities/abs', property: 'ABS', max: ABS_MAX },
  props: { attribute: 'properties', property: 'PROP', max: INPUT_PROP_MAX },
} as const;

/** The bus of an input device: `id/bustype` (hex), else PRODUCT=bus/vendor/product/version (hex). */
export function inputBustype(record: RawDeviceRecord): number {
  const fromSysfs = record.attribute('id/bustype')?.trim();
  const text = fromSysfs !== undefined && fromSysfs !== '' ? fromSysfs : record.properties.PRODUCT?.split('/')[0];
  return text !== undefined && /^[0-9a-fA-F]{1,4}$/.test(text.trim()) ? parseInt(text.trim(), 16) : 0;
}

/**
 * The capabilities of an input device (`inputN`): sysfs `capabilities/*` where the source has them,
 * else the same bitmaps from its uevent. `wordBits` is the backend kernel's `unsigned long` when
 * known; by default it is found from the text (see the file comment).
 */
export function readCapabilities(record: RawDeviceRecord, wordBits?: 32 | 64): InputCapabilities {
  const texts = Object.fromEntries(
    Object.entries(BITMAP_SOURCES).map(([name, source]) => [
      name,
      record.attribute(source.attribute) ?? record.properties[source.property],
    ]),
  ) as Record<keyof typeof BITMAP_SOURCES, string | undefined>;
  const bits = wordBits ?? wordSizeOf(texts, record.attribute('modalias') ?? record.properties.MODALIAS);
  const parse = (name: keyof typeof BITMAP_SOURCES) => Bitmap.parse(texts[name], bits, BITMAP_SOURCES[name].max);
  return {
    ev: parse('ev'),
    key: parse('key'),
    rel: parse('rel'),
    abs: parse('abs'),
    props: parse('props'),
    bustype: inputBustype(record),
  };
}

function wordSizeOf(texts: Record<string, string | undefined>, modalias: string | undefined): 32 | 64 {
  const words = Object.values(texts).flatMap((t) => t?.trim().split(/\s+/) ?? []);
  if (words.some((w) => w.replace(/^0+/, '').length > 8)) return 64;
  const keys = texts.key;
  if (keys === undefined || keys.trim().split(/\s+/).length < 2) return 64;
  // The modalias lists key codes from KEY_MIN_INTERESTING up, in hex: the reading that agrees wins.
  const listed = modaliasKeys(modalias);
  if (!listed) return 64;
  const agrees = (bits: 32 | 64) => {
    const parsed = Bitmap.parse(keys, bits, KEY_MAX)
      .toArray()
      .filter((k) => k >= KEY_MIN_INTERESTING);
    return parsed.length === listed.length && parsed.every((k, i) => k === listed[i]);
  };
  return agrees(64) || !agrees(32) ? 64 : 32;
}

/** `input:b0003v05F3p0007e0100-e0,1,4,11,14,k74,75,77,...,ram4,...`: the `k` list, or undefined. */
function modaliasKeys(modalias: string | undefined): number[] | undefined {
  const match = /-e[0-9A-Fa-f,]*k([0-9A-Fa-f,]*)r/.exec(modalias ?? '');
  if (!match) return undefined;
  return match[1]
    .split(',')
    .filter((k) => /^[0-9A-Fa-f]{1,3}$/.test(k))
    .map((k) => parseInt(k, 16))
    .sort((a, b) => a - b);
}

/**
 * udev's input_id: the ID_INPUT_* flags a device gets from its capabilities (test_pointers, test_key,
 * the scroll-wheel-only and switch cases). hwdb overrides are not applied: no recording carries one.
 */
export function inputIdFlags(caps: InputCapabilities): Set<InputFlag> {
  const flags = new Set<InputFlag>();
  const isPointer = testPointers(caps, flags);
  const isKey = testKey(caps, flags);
  if (!isPointer && !isKey && caps.ev.has(EV_REL) && (caps.rel.has(REL_WHEEL) || caps.rel.has(REL_HWHEEL))) {
    flags.add('KEY');
  }
  if (caps.ev.has(EV_SW)) flags.add('SWITCH');
  return flags;
}

function testPointers(caps: InputCapabilities, flags: Set<InputFlag>): boolean {
  const { ev, abs, key, rel, props } = caps;
  const hasKeys = ev.has(EV_KEY);
  const hasAbsCoordinates = abs.has(ABS_X) && abs.has(ABS_Y);
  const has3dCoordinates = hasAbsCoordinates && abs.has(ABS_Z);
  let isAccelerometer = props.has(INPUT_PROP_ACCELEROMETER);
  if (!hasKeys && has3dCoordinates) isAccelerometer = true;
  if (isAccelerometer) {
    flags.add('ACCELEROMETER');
    return true;
  }

  let isPointingStick = props.has(INPUT_PROP_POINTING_STICK);
  const hasStylus = key.has(BTN_STYLUS);
  const hasPen = key.has(BTN_TOOL_PEN);
  const fingerButNoPen = key.has(BTN_TOOL_FINGER) && !key.has(BTN_TOOL_PEN);
  const hasMouseButton = key.any(BTN_MOUSE, BTN_JOYSTICK);
  const hasRelCoordinates = ev.has(EV_REL) && rel.has(REL_X) && rel.has(REL_Y);
  let hasMtCoordinates = abs.has(ABS_MT_POSITION_X) && abs.has(ABS_MT_POSITION_Y);
  // A device that claims every abs axis (ABS_MT_SLOT and the one below it) is not multitouch.
  if (hasMtCoordinates && abs.has(ABS_MT_SLOT) && abs.has(ABS_MT_SLOT - 1)) hasMtCoordinates = false;
  const isDirect = props.has(INPUT_PROP_DIRECT);
  const hasTouch = key.has(BTN_TOUCH);
  const hasPadButtons = key.has(BTN_0) && key.has(BTN_1) && !hasPen;
  const hasWheel = ev.has(EV_REL) && (rel.has(REL_WHEEL) || rel.has(REL_HWHEEL));

  let joystickButtons = 0;
  // A mouse with more than 16 buttons runs into the joystick range: those are not counted.
  if (!key.has(BTN_JOYSTICK - 1)) {
    joystickButtons =
      key.count(BTN_JOYSTICK, BTN_DIGI) +
      key.count(BTN_TRIGGER_HAPPY, BTN_TRIGGER_HAPPY40 + 1) +
      key.count(BTN_DPAD_UP, BTN_DPAD_RIGHT + 1);
  }
  const joystickAxes = abs.count(ABS_RX, ABS_PRESSURE);

  let isTablet = false;
  let isTabletPad = false;
  let isTouchpad = false;
  let isTouchscreen = false;
  let isJoystick = false;
  let isAbsMouse = false;
  if (hasAbsCoordinates) {
    if (hasStylus || hasPen) isTablet = true;
    else if (fingerButNoPen && !isDirect) isTouchpad = true;
    else if (hasMouseButton) isAbsMouse = true;
    else if (hasTouch || isDirect) isTouchscreen = true;
    else if (joystickButtons > 0 || joystickAxes > 0) isJoystick = true;
  } else if (joystickButtons > 0 || joystickAxes > 0) {
    isJoystick = true;
  }
  if (hasMtCoordinates) {
    if (hasStylus || hasPen) isTablet = true;
    else if (fingerButNoPen && !isDirect) isTouchpad = true;
    else if (hasTouch || isDirect) isTouchscreen = true;
  }
  if (isTablet && hasPadButtons) isTabletPad = true;
  if (hasPadButtons && hasWheel && !hasRelCoordinates) {
    isTablet = true;
    isTabletPad = true;
  }
  const isMouse =
    !isTablet && !isTouchpad && !isJoystick && hasMouseButton && (hasRelCoordinates || !hasAbsCoordinates);
  // There is no such thing as an i2c mouse.
  if (isMouse && caps.bustype === BUS_I2C) isPointingStick = true;
  if (isJoystick) {
    const wellKnownKeys = hasKeys ? WELL_KNOWN_KEYBOARD_KEYS.filter((k) => key.has(k)).length : 0;
    if (wellKnownKeys >= 4 || joystickButtons + joystickAxes < 2) isJoystick = false;
    if (hasWheel && hasPadButtons) isJoystick = false;
  }

  if (isPointingStick) flags.add('POINTINGSTICK');
  if (isMouse || isAbsMouse) flags.add('MOUSE');
  if (isTouchpad) flags.add('TOUCHPAD');
  if (isTouchscreen) flags.add('TOUCHSCREEN');
  if (isJoystick) flags.add('JOYSTICK');
  if (isTablet) flags.add('TABLET');
  if (isTabletPad) flags.add('TABLET_PAD');
  return isTablet || isMouse || isAbsMouse || isTouchpad || isTouchscreen || isJoystick || isPointingStick;
}

function testKey(caps: InputCapabilities, flags: Set<InputFlag>): boolean {
  if (!caps.ev.has(EV_KEY)) return false;
  // KEY_* only, not BTN_*: any bit below BTN_MISC, or in the two high key blocks.
  const found =
    caps.key.any(0, BTN_MISC) || caps.key.any(KEY_OK, BTN_DPAD_UP) || caps.key.any(KEY_ALS_TOGGLE, BTN_TRIGGER_HAPPY);
  if (found) flags.add('KEY');
  // ESC, the digits and Q to D (bits 1 to 31): a full keyboard.
  let fullKeyboard = true;
  for (let k = 1; k < 32; k++) if (!caps.key.has(k)) fullKeyboard = false;
  if (fullKeyboard) {
    flags.add('KEYBOARD');
    return true;
  }
  return found;
}

/** The flags udev wrote (`ID_INPUT_*=1`), or undefined where udev did not run (no ID_INPUT). */
export function udevInputFlags(properties: Readonly<Record<string, string>>): Set<InputFlag> | undefined {
  if (properties.ID_INPUT !== '1') return undefined;
  return new Set(INPUT_FLAGS.filter((flag) => properties[`ID_INPUT_${flag}`] === '1'));
}
