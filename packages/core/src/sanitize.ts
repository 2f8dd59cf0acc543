/**
 * Untrusted device strings (USB descriptors, udev properties, sysfs attributes) are sanitized once,
 * at the parser boundary, and carry the `SafeText` brand after it. What survives is printable text
 * only: no control characters, no terminal escape sequences, no bidi overrides, bounded length.
 */

export type SafeText = string & { readonly __safeText: unique symbol };

export const MAX_TEXT_LENGTH = 128;

// ESC-introduced sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), and two-byte escapes.
// eslint-disable-next-line no-control-regex
const ESCAPE_SEQUENCE = /\u001b(?:\[[0-?]*[ -/]*[@-~]|\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|[@-Z\\-_])?/g;
// C0, DEL, C1 (which includes the 8-bit CSI \u009b), and the Unicode format characters that reorder
// or hide text (bidi marks, overrides and isolates, the Arabic letter mark, soft hyphen, Mongolian
// vowel separator, zero-width characters, BOM, interlinear annotations, tag characters).
const UNPRINTABLE_SOURCE =
  '[\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u061c\\u180e\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u2069\\ufeff\\ufff9-\\ufffb\\u{e0000}-\\u{e007f}';
const UNPRINTABLE = new RegExp(`${UNPRINTABLE_SOURCE}]`, 'gu');

export function sanitizeText(raw: string | undefined | null, maxLength = MAX_TEXT_LENGTH): SafeText | undefined {
  if (raw === undefined || raw === null) return undefined;
  let text = raw.replace(ESCAPE_SEQUENCE, '').replace(UNPRINTABLE, ' ');
  text = text.replace(/\s+/g, ' ').trim();
  if (text.length === 0) return undefined;
  if (text.length > maxLength) {
    // Do not cut a surrogate pair in half.
    const chars = Array.from(text);
    if (chars.length > maxLength) text = chars.slice(0, maxLength - 1).join('') + '…';
  }
  return text as SafeText;
}

// What sanitizeText leaves none of: UNPRINTABLE's characters, and the line breaks its `\s+` folds.
const UNSAFE = new RegExp(`${UNPRINTABLE_SOURCE}\\u2028\\u2029]`, 'u');

/**
 * Whether a string is what `SafeText` promises, checked at run time: the brand is the compiler's
 * only, and a driver (or an agent behind it) can hand over anything.
 */
export function isSafeText(text: unknown, maxLength: number): text is SafeText {
  return typeof text === 'string' && text.length <= maxLength && !UNSAFE.test(text);
}

/** For strings devgate itself builds from already safe parts. */
export function trusted(text: string): SafeText {
  return text as SafeText;
}

/**
 * udev's `*_ENC` properties escape unsafe bytes as `\xNN`; decode them (as UTF-8) before sanitizing.
 */
export function decodeUdevEscapes(raw: string): string {
  if (!raw.includes('\\x')) return raw;
  const bytes: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const m = /^\\x([0-9a-fA-F]{2})/.exec(raw.slice(i, i + 4));
    if (m) {
      bytes.push(parseInt(m[1], 16));
      i += 3;
    } else {
      bytes.push(...Buffer.from(raw[i], 'utf8'));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

const KERNEL_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;

/** A kernel device name (`sda1`, `dm-0`, `event5`): what a name from sysfs, an agent or a recording must be. */
export function isKernelName(name: string): boolean {
  return KERNEL_NAME.test(name);
}

/** Holders named in a reason at most; the others are counted (an agent may list 1,024 of them). */
const NAMED_HOLDERS = 4;

/**
 * `in use by dm-0`, for a block device with holders. Only kernel names are shown, the others are
 * counted: a hostile name neither reaches a terminal nor makes a held device look free.
 */
export function inUseBy(holders: readonly string[]): string {
  const named = holders.filter(isKernelName).slice(0, NAMED_HOLDERS);
  const others = holders.length - named.length;
  const devices = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;
  if (named.length === 0) return `in use by ${devices(others, 'device')}`;
  const list = named.join(', ');
  return others === 0 ? `in use by ${list}` : `in use by ${list} and ${devices(others, 'other device')}`;
}
