import { recordOf } from '@devgate/core';
import { classesOf, inputInterface, primaryClass, qubesServiceOf } from './input-class';
import { Bitmap, type InputCapabilities, inputIdFlags, readCapabilities } from './parse-input-capabilities';

/** A device as its uevent describes it (the kernel's own text). */
function caps(uevent: Record<string, string>): InputCapabilities {
  return readCapabilities(recordOf('/devices/virtual/input/input1', 'input', uevent));
}

const flags = (uevent: Record<string, string>) => [...inputIdFlags(caps(uevent))].sort();

/** The kernel's text for a set of bits, 64-bit words, as input_print_bitmap writes it. */
function bitmapText(...bits: number[]): string {
  const words: bigint[] = [];
  for (const bit of bits) {
    const i = Math.floor(bit / 64);
    while (words.length <= i) words.push(0n);
    words[i] |= 1n << BigInt(bit % 64);
  }
  return words
    .reverse()
    .map((w) => w.toString(16))
    .join(' ');
}

describe('Bitmap: the kernel’s capability text', () => {
  it('reads hex words most significant first, one unsigned long each', () => {
    // The synaptics touchpad: BTN_LEFT (0x110) and BTN_TOOL_FINGER (0x145) on a 64-bit kernel.
    const key = Bitmap.parse('e520 10000 0 0 0 0', 64, 0x2ff);
    expect(key.has(0x110)).toBe(true);
    expect(key.has(0x145)).toBe(true);
    expect(key.has(0x14a)).toBe(true);
    expect(key.size).toBe(7);
    expect(Bitmap.parse('10000 0 0 0 0', 32, 0x2ff).toArray()).toEqual([0x90]);
  });

  it('ignores words that do not parse or are too long, as udev does, and reads no more than the kernel writes', () => {
    expect(Bitmap.parse('zz 3', 64, 0x3f).toArray()).toEqual([0, 1]);
    expect(Bitmap.parse('1 11111111111111111 3', 64, 0x3f).toArray()).toEqual([0, 1]);
    expect(Bitmap.parse(`${'ffffffffffffffff '.repeat(50_000)}1`, 64, 0x2ff).size).toBe(1 + 11 * 64);
    expect(Bitmap.parse(undefined, 64, 0x1f).size).toBe(0);
    expect(Bitmap.parse('', 64, 0x1f).size).toBe(0);
  });

  it('tells a 32-bit kernel’s words from the modalias, which lists key codes whatever the word size', () => {
    // BTN_LEFT on a 32-bit kernel is word 8, bit 16.
    const thirtyTwo = caps({
      EV: '7',
      KEY: '70000 0 0 0 0 0 0 0 0',
      MODALIAS: 'input:b0003v0001p0001e0001-e0,1,2,k110,111,112,ramlsfw',
    });
    expect(thirtyTwo.key.toArray()).toEqual([0x110, 0x111, 0x112]);
    const sixtyFour = caps({
      EV: '7',
      KEY: '70000 0 0 0 0',
      MODALIAS: 'input:b0003v0001p0001e0001-e0,1,2,k110,111,112,ramlsfw',
    });
    expect(sixtyFour.key.toArray()).toEqual([0x110, 0x111, 0x112]);
  });
});

describe('input_id: udev’s classification rules', () => {
  // Capabilities of QEMU's emulated devices (hw/usb/dev-hid.c), as a guest kernel reports them.
  const usbMouse = { EV: '17', KEY: '70000 0 0 0 0', REL: '903', MSC: '10', PRODUCT: '3/627/1/0' };
  const usbTablet = { EV: '1f', KEY: '70000 0 0 0 0', REL: '900', ABS: '3', MSC: '10', PRODUCT: '3/627/1/0' };

  it('a relative mouse is a mouse; an absolute one (QEMU’s usb-tablet) is a mouse to udev and a tablet to Qubes', () => {
    expect(flags(usbMouse)).toEqual(['MOUSE']);
    expect(flags(usbTablet)).toEqual(['MOUSE']);
    const tablet = caps(usbTablet);
    expect(classesOf(inputIdFlags(tablet), tablet)).toEqual(['tablet']);
    expect(qubesServiceOf(inputIdFlags(tablet), tablet)).toBe('qubes.InputTablet');
    const mouse = caps(usbMouse);
    expect(qubesServiceOf(inputIdFlags(mouse), mouse)).toBe('qubes.InputMouse');
  });

  it('keys 1 to 31 make a keyboard; any key below BTN_MISC only KEY', () => {
    const keyboard = {
      EV: '120013',
      KEY: '1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe',
      PRODUCT: '3/627/1/0',
    };
    expect(flags(keyboard)).toEqual(['KEY', 'KEYBOARD']);
    expect(flags({ EV: '3', KEY: '10000000000000 0' })).toEqual(['KEY']); // a power button
    const kb = caps(keyboard);
    expect(primaryClass(classesOf(inputIdFlags(kb), kb))).toBe('keyboard');
    expect(qubesServiceOf(inputIdFlags(kb), kb)).toBe('qubes.InputKeyboard');
  });

  it('touchpads, touchscreens, tablets with pens and pads', () => {
    // Fingers, not direct: a touchpad. Direct with BTN_TOUCH: a touchscreen. A pen: a tablet.
    const touchpad = { EV: 'b', KEY: 'e520 10000 0 0 0 0', ABS: '660800011000003', PROP: '5' };
    expect(flags(touchpad)).toEqual(['TOUCHPAD']);
    expect(flags({ EV: 'b', KEY: '400 0 0 0 0 0', ABS: '260800000000003', PROP: '2' })).toEqual(['TOUCHSCREEN']);
    expect(flags({ EV: 'b', KEY: '1c03 0 0 0 0 0', ABS: '1000003' })).toEqual(['TABLET']);
    // BTN_0 and BTN_1 with a wheel and no relative axes: a tablet pad.
    expect(flags({ EV: 'f', KEY: '3 0 0 0 0', REL: '100', ABS: '3' }).includes('TABLET_PAD')).toBe(true);
  });

  it('joysticks, and keyboards that only look like one', () => {
    const gamepad = { EV: '1b', KEY: '7fff000000000000 0 0 0 0', ABS: '3003f' };
    expect(flags(gamepad)).toEqual(['JOYSTICK']);
    // Joystick buttons plus LEFTCTRL, CAPSLOCK, NUMLOCK and INSERT: a keyboard.
    const buttons = Array.from({ length: 12 }, (_, i) => 0x120 + i);
    expect(flags({ EV: '3', KEY: bitmapText(...buttons) })).toEqual(['JOYSTICK']);
    expect(bitmapText(0x110, 0x145)).toBe('20 10000 0 0 0 0');
    const keyboardish = { EV: '3', KEY: bitmapText(...buttons, 29, 58, 69, 110) };
    expect(flags(keyboardish)).toEqual(['KEY']);
  });

  it('an accelerometer, a scroll wheel alone, a switch, and an I2C “mouse” (a pointing stick)', () => {
    expect(flags({ EV: '9', ABS: '7' })).toEqual(['ACCELEROMETER']);
    expect(flags({ EV: '5', REL: '100' })).toEqual(['KEY']);
    expect(flags({ EV: '21', SW: '1' })).toEqual(['SWITCH']);
    expect(flags({ ...usbMouse, PRODUCT: '18/6cb/cea3/100' })).toEqual(['MOUSE', 'POINTINGSTICK']);
  });

  it('builds `i` interface codes: class, then bus', () => {
    expect(inputInterface('keyboard', 0x03)).toBe('i010300');
    expect(inputInterface('touchpad', 0x18)).toBe('i041800');
    expect(inputInterface('other', 0x19)).toBe('i001900');
  });
});
