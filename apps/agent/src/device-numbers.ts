/** `major:minor` of a device number (Linux's encoding: 12 bits of major, 20 of minor, split). */
export function majorMinorOf(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}
