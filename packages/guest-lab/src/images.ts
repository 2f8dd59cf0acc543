/**
 * Disk images for lab sticks: a sparse file with an ext4 file system made from a set of files
 * (`mkfs.ext4 -d`), so a test knows what the guest must read, without mounting anything on the host.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface DiskImageSpec {
  /** Default 16. */
  readonly sizeMiB?: number;
  /** The file system's label. Default LABSTICK. */
  readonly label?: string;
  /** Files to put in it: relative path -> content. */
  readonly files?: Readonly<Record<string, string | Buffer>>;
}

/** Writes `file`: an ext4 image holding `spec.files`. Needs e2fsprogs. */
export function createDiskImage(file: string, spec: DiskImageSpec = {}): string {
  const source = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-lab-image-'));
  try {
    for (const [name, content] of Object.entries(spec.files ?? {})) {
      const target = path.join(source, name);
      if (!target.startsWith(source + path.sep)) throw new Error(`file name outside the image: ${name}`);
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.writeFileSync(target, content);
    }
    fs.writeFileSync(file, '');
    fs.truncateSync(file, (spec.sizeMiB ?? 16) * 1024 * 1024);
    execFileSync('mkfs.ext4', ['-q', '-F', '-L', spec.label ?? 'LABSTICK', '-d', source, file], { stdio: 'pipe' });
    return file;
  } finally {
    fs.rmSync(source, { recursive: true, force: true });
  }
}
