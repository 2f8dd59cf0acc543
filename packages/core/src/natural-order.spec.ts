import { compareNatural } from './natural-order.js';

const sign = (n: number) => Math.sign(n);

describe('compareNatural', () => {
  it('orders digit runs as numbers', () => {
    const names = ['loop10', 'loop9', 'loop1', 'loop1p10', 'loop1p2', 'sda', 'nvme0n1p2', 'nvme0n1p10'];
    expect([...names].sort(compareNatural)).toEqual([
      'loop1',
      'loop1p2',
      'loop1p10',
      'loop9',
      'loop10',
      'nvme0n1p2',
      'nvme0n1p10',
      'sda',
    ]);
    expect(['1-10', '1-2', '1-1.2', '1-1', '2-1', '10-1'].sort(compareNatural)).toEqual([
      '1-1',
      '1-1.2',
      '1-2',
      '1-10',
      '2-1',
      '10-1',
    ]);
  });

  it('is a total order: antisymmetric, zero only for equal strings', () => {
    for (const [a, b] of [
      ['a01', 'a1'],
      ['A', 'a'],
      ['x', 'x'],
      ['', 'a'],
    ]) {
      expect(sign(compareNatural(a, b)) + sign(compareNatural(b, a))).toBe(0);
      expect(compareNatural(a, b) === 0).toBe(a === b);
    }
  });

  it("agrees with Intl.Collator('en', { numeric: true }) on kernel-style names", () => {
    const collator = new Intl.Collator('en', { numeric: true });
    let seed = 7;
    const random = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    // Lower case: the collator's tie-break between cases is not a kernel name's concern.
    for (const alphabet of ['abcxyz0123456789-.', 'abc0129-:']) {
      const name = () => Array.from({ length: 1 + random(8) }, () => alphabet[random(alphabet.length)]).join('');
      for (let i = 0; i < 5_000; i++) {
        const [a, b] = [name(), name()];
        const expected = sign(collator.compare(a, b));
        if (expected !== 0) expect([a, b, sign(compareNatural(a, b))]).toEqual([a, b, expected]);
      }
    }
  });
});
