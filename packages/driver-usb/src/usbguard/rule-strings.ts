/**
 * Quoted strings in USBGuard rules are byte strings: `"é"` is the two bytes c3 a9 and `"\xff"` is one
 * byte that is not UTF-8 at all. devgate keeps rule values as ordinary JS strings so they compare
 * directly with the names and serials the USB driver reads, and uses the "surrogate escape" trick
 * (Python's PEP 383) for bytes that are not valid UTF-8: such a byte b becomes the lone surrogate
 * U+DC00+b, which no real text contains, and turns back into the byte when the rule is printed.
 * So decode(encode(x)) and encode(decode(b)) are both identities, and formatRule
 * (format-usbguard-rules.ts) can print exactly the bytes USBGuard would.
 */

/** The UTF-8 bytes of a string; lone surrogates U+DC80..U+DCFF stand for the raw bytes 80..ff. */
export function stringToBytes(value: string): number[] {
  const bytes: number[] = [];
  for (let i = 0; i < value.length;) {
    const cp = value.codePointAt(i) as number;
    i += cp > 0xffff ? 2 : 1;
    if (cp >= 0xdc80 && cp <= 0xdcff) {
      bytes.push(cp - 0xdc00);
    } else if (cp >= 0xd800 && cp <= 0xdfff) {
      bytes.push(0xef, 0xbf, 0xbd); // any other lone surrogate cannot be encoded: U+FFFD, as Buffer does
    } else {
      pushUtf8(bytes, cp);
    }
  }
  return bytes;
}

export function pushUtf8(bytes: number[], cp: number): void {
  if (cp < 0x80) bytes.push(cp);
  else if (cp < 0x800) bytes.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
  else if (cp < 0x10000) bytes.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  else bytes.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
}

/** Decodes UTF-8, mapping every byte that is not part of a well-formed sequence to U+DC00+byte. */
export function bytesToString(bytes: readonly number[]): string {
  let out = '';
  let i = 0;
  while (i < bytes.length) {
    const lead = bytes[i];
    if (lead < 0x80) {
      out += String.fromCharCode(lead);
      i += 1;
      continue;
    }
    const decoded = decodeSequence(bytes, i);
    if (decoded) {
      out += String.fromCodePoint(decoded.cp);
      i += decoded.length;
    } else {
      out += String.fromCharCode(0xdc00 + lead);
      i += 1;
    }
  }
  return out;
}

function decodeSequence(bytes: readonly number[], at: number): { cp: number; length: number } | undefined {
  const lead = bytes[at];
  let length: number;
  let cp: number;
  let min: number;
  if (lead >= 0xc2 && lead <= 0xdf) [length, cp, min] = [2, lead & 0x1f, 0x80];
  else if (lead >= 0xe0 && lead <= 0xef) [length, cp, min] = [3, lead & 0x0f, 0x800];
  else if (lead >= 0xf0 && lead <= 0xf4) [length, cp, min] = [4, lead & 0x07, 0x10000];
  else return undefined;
  if (at + length > bytes.length) return undefined;
  for (let k = 1; k < length; k += 1) {
    const next = bytes[at + k];
    if ((next & 0xc0) !== 0x80) return undefined;
    cp = (cp << 6) | (next & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return undefined;
  return { cp, length };
}
