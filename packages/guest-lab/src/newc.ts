/**
 * A writer for the cpio "newc" format, the one the kernel unpacks as an initramfs. Entries get fixed
 * owners and times, so the same inputs always give the same archive (and the same cache key).
 */

export type NewcEntry =
  | { readonly type: 'dir'; readonly path: string; readonly mode?: number }
  | { readonly type: 'file'; readonly path: string; readonly data: Buffer; readonly mode?: number }
  | {
      readonly type: 'char';
      readonly path: string;
      readonly major: number;
      readonly minor: number;
      readonly mode?: number;
    };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;

export function newcArchive(entries: readonly NewcEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const push = (name: string, mode: number, data: Buffer, rdev: [number, number] = [0, 0]) => {
    const nameBytes = Buffer.from(name + '\0', 'utf8');
    const fields = [
      ino++, // c_ino
      mode,
      0, // uid
      0, // gid
      (mode & S_IFDIR) === S_IFDIR ? 2 : 1, // nlink
      0, // mtime
      data.length,
      0, // devmajor
      0, // devminor
      rdev[0],
      rdev[1],
      nameBytes.length,
      0, // check
    ];
    const header = Buffer.from('070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''), 'ascii');
    parts.push(header, nameBytes, pad(header.length + nameBytes.length), data, pad(data.length));
  };
  for (const entry of entries) {
    const name = entry.path.replace(/^\/+/, '');
    if (entry.type === 'dir') push(name, S_IFDIR | (entry.mode ?? 0o755), Buffer.alloc(0));
    else if (entry.type === 'file') push(name, S_IFREG | (entry.mode ?? 0o644), entry.data);
    else push(name, S_IFCHR | (entry.mode ?? 0o600), Buffer.alloc(0), [entry.major, entry.minor]);
  }
  push('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

function pad(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}
