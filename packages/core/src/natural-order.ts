/**
 * Kernel names in the order people expect: digit runs compare as numbers, so `1-2` comes before
 * `1-10` and `loop9` before `loop10`. What `Intl.Collator('en', { numeric: true })` does for these
 * ASCII names, without ICU: the first collator of a process costs milliseconds, a large part of a
 * cold listing (ADR 0014).
 */
export function compareNatural(a: string, b: string): number {
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const ca = a.charCodeAt(i);
    const cb = b.charCodeAt(j);
    if (isDigit(ca) && isDigit(cb)) {
      const endA = digitsEnd(a, i);
      const endB = digitsEnd(b, j);
      // Leading zeros do not make a number larger; then the longer run is the larger number.
      const startA = skipZeros(a, i, endA);
      const startB = skipZeros(b, j, endB);
      const lengths = endA - startA - (endB - startB);
      if (lengths !== 0) return lengths;
      for (let k = 0; k < endA - startA; k++) {
        const diff = a.charCodeAt(startA + k) - b.charCodeAt(startB + k);
        if (diff !== 0) return diff;
      }
      i = endA;
      j = endB;
      continue;
    }
    const diff = weight(ca) - weight(cb);
    if (diff !== 0) return diff;
    i++;
    j++;
  }
  const rest = a.length - i - (b.length - j);
  // Equal but for zeros or case: a fixed order all the same, so sorting is deterministic.
  return rest !== 0 ? rest : a < b ? -1 : a > b ? 1 : 0;
}

function isDigit(code: number): boolean {
  return code >= 48 && code <= 57;
}

function digitsEnd(text: string, from: number): number {
  let end = from;
  while (end < text.length && isDigit(text.charCodeAt(end))) end++;
  return end;
}

function skipZeros(text: string, from: number, end: number): number {
  let start = from;
  while (start < end - 1 && text.charCodeAt(start) === 48) start++;
  return start;
}

/** As the collator orders them: punctuation, then digits, then letters whatever their case. */
function weight(code: number): number {
  if (code >= 65 && code <= 90) return 0x200 + code + 32;
  if (code >= 97 && code <= 122) return 0x200 + code;
  if (isDigit(code)) return 0x100 + code;
  return code;
}
