import { MAX_TEXT_LENGTH, decodeUdevEscapes, isSafeText, sanitizeText } from './sanitize';

describe('sanitizeText', () => {
  it('keeps ordinary printable text', () => {
    expect(sanitizeText('Kingston DataTraveler 3.0')).toBe('Kingston DataTraveler 3.0');
    expect(sanitizeText('Clé USB 😀')).toBe('Clé USB 😀');
  });

  it('removes terminal escape sequences whole', () => {
    expect(sanitizeText('Evil\u001b[2J\u001b[31mRed\u001b[0m')).toBe('EvilRed');
    expect(sanitizeText('title\u001b]0;pwned\u0007 x')).toBe('title x');
    expect(sanitizeText('8-bit\u009b31m csi')).toBe('8-bit 31m csi');
  });

  it('turns control, bidi and zero-width characters into spaces and trims', () => {
    expect(sanitizeText('a\u0000b\nc\rd\te\u007f')).toBe('a b c d e');
    expect(sanitizeText('\u202eexe.txt')).toBe('exe.txt');
    expect(sanitizeText('zero\u200bwidth')).toBe('zero width');
  });

  it('leaves none of the invisible format characters a terminal or notification would hide or reorder by', () => {
    for (const hidden of ['\u061c', '\u00ad', '\u180e', '\u{e0041}', '\u{e007f}']) {
      expect(sanitizeText(`a${hidden}b`)).toBe('a b');
      expect(isSafeText(`a${hidden}b`, 10)).toBe(false);
    }
    expect(isSafeText('a b', 10)).toBe(true);
  });

  it('bounds the length without splitting a surrogate pair', () => {
    const long = '😀'.repeat(MAX_TEXT_LENGTH * 10);
    const out = sanitizeText(long)!;
    expect(Array.from(out)).toHaveLength(MAX_TEXT_LENGTH);
    expect(out.endsWith('…')).toBe(true);
    expect(out).not.toMatch(/[\ud800-\udbff](?![\udc00-\udfff])/);
  });

  it('maps empty and missing strings to undefined', () => {
    expect(sanitizeText(undefined)).toBeUndefined();
    expect(sanitizeText('  \u0001 ')).toBeUndefined();
  });

  it('leaves markup as literal text (escaping is the renderer’s job)', () => {
    expect(sanitizeText('<b>bold</b>')).toBe('<b>bold</b>');
  });
});

describe('decodeUdevEscapes', () => {
  it('decodes \\xNN as UTF-8 bytes', () => {
    expect(decodeUdevEscapes('USB\\x20DISK\\x203.0')).toBe('USB DISK 3.0');
    expect(decodeUdevEscapes('Cl\\xc3\\xa9')).toBe('Clé');
  });
  it('decoded escapes still go through sanitizing', () => {
    expect(sanitizeText(decodeUdevEscapes('a\\x1b[31mb'))).toBe('ab');
  });
});
