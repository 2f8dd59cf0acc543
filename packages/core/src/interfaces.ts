/**
 * Interface codes are Qubes' 7-character `BCCSSII`: a class letter (`u` USB, `p` PCI, `b` block,
 * `m` mic, `i` input, `?` unknown) then hex class, subclass and programming interface; `*` is a
 * wildcard. Categories are derived from interface patterns: the best-scoring pattern wins.
 */

export type InterfaceCode = string & { readonly __interface?: never };

/** An interface code or pattern, as JSON Schema `pattern` text (the API validates with it). */
export const INTERFACE_CODE_PATTERN = '^[upbmi?*][0-9a-f*]{6}$';

const CODE = new RegExp(INTERFACE_CODE_PATTERN);

export const UNKNOWN_INTERFACE: InterfaceCode = '?******';

export function isInterfaceCode(text: string): text is InterfaceCode {
  return CODE.test(text);
}

export function interfaceCode(letter: string, cls: number, subclass: number, protocol: number): InterfaceCode {
  const hex = (n: number) => (n & 0xff).toString(16).padStart(2, '0');
  return `${letter}${hex(cls)}${hex(subclass)}${hex(protocol)}`;
}

/** `*` in the pattern matches any character. */
export function interfaceMatches(pattern: InterfaceCode, code: InterfaceCode): boolean {
  if (pattern.length !== 7 || code.length !== 7) return false;
  for (let i = 0; i < 7; i++) if (pattern[i] !== '*' && pattern[i] !== code[i]) return false;
  return true;
}

/** The literal characters a pattern shares with a code, or -1 when it does not match. */
function score(pattern: InterfaceCode, code: InterfaceCode): number {
  let total = 0;
  for (let i = 0; i < 7; i++) {
    if (pattern[i] === '*') continue;
    if (pattern[i] !== code[i]) return -1;
    total++;
  }
  return total;
}

export const DEVICE_CATEGORIES = {
  Network: ['u02****', 'p0703**', 'p02****', 'ue0****'],
  // `i` codes are devgate's input devices: `i` + class (01 keyboard, 02 mouse, ...) + bus + 00.
  Keyboard: ['u03**01', 'p0900**', 'i01****'],
  Mouse: ['u03**02', 'p0902**', 'i02****'],
  Input: ['u03****', 'p09****', 'i******'],
  Printer: ['u07****'],
  Camera: ['p0903**', 'u06****', 'u0e****'],
  Microphone: ['m******'],
  Audio: ['p0403**', 'p0401**', 'p0408**', 'u01****', 'm******'],
  Multimedia: ['u10****', 'p03****', 'p04****'],
  USB_Storage: ['u08****'],
  Block_Storage: ['b******'],
  Storage: ['b******', 'u08****', 'p01****'],
  Bluetooth: ['ue00101', 'p0d11**'],
  Smart_Card_Readers: ['u0b****'],
  Display: ['p0300**', 'p0380**'],
  Memory: ['p05****'],
  PCI_Bridge: ['p06****'],
  Docking_Station: ['p0a****'],
  Processor: ['p0b****', 'p40****'],
  PCI_Serial_Bus: ['p0c****'],
  PCI_USB: ['p0c03**'],
  Other: ['*******'],
} as const satisfies Record<string, readonly string[]>;

export type DeviceCategory = keyof typeof DEVICE_CATEGORIES;

/**
 * Categories already worked out, by code: a listing asks for the same few codes (`b******`) once per
 * device. Bounded, since a backend VM's agent chooses the codes.
 */
const knownCategories = new Map<string, DeviceCategory>();

/** The category of one interface: the pattern with the most literal matches wins (first on ties). */
export function categoryOf(code: InterfaceCode): DeviceCategory {
  const known = knownCategories.get(code);
  if (known !== undefined) return known;
  let best: DeviceCategory = 'Other';
  let bestScore = -1;
  for (const [category, patterns] of Object.entries(DEVICE_CATEGORIES) as [DeviceCategory, readonly string[]][]) {
    for (const pattern of patterns) {
      const s = score(pattern, code);
      if (s > bestScore) {
        best = category;
        bestScore = s;
      }
    }
  }
  if (knownCategories.size < 1024) knownCategories.set(code, best);
  return best;
}

/** A device's category: that of its first interface whose category is not Other. */
export function deviceCategory(interfaces: readonly InterfaceCode[]): DeviceCategory {
  for (const code of interfaces) {
    const category = categoryOf(code);
    if (category !== 'Other') return category;
  }
  return 'Other';
}
