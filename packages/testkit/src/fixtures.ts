/**
 * Where the recorded fixtures are. They are kept outside the repository, in a `shared/` directory
 * beside it (`<parent>/main` is the repository, `<parent>/shared/fixtures/recorded` the
 * recordings), so the lookup walks up from this file until a directory holds
 * `shared/fixtures/recorded`. Nothing depends on where the parent directory is.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const RECORDED = path.join('shared', 'fixtures', 'recorded');

/** The directory holding the recordings; throws if no `shared/fixtures/recorded` is found above this package. */
export function recordedFixturesDir(from: string = __dirname): string {
  for (let dir = path.resolve(from); ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, RECORDED);
    if (isDirectory(candidate)) return candidate;
    if (path.dirname(dir) === dir) break;
  }
  throw new Error(
    `recorded fixtures not found: no ${RECORDED} directory in ${from} or any directory above it ` +
      `(put a copy of shared/ beside the repository)`,
  );
}

/** The path of one recording by file name (`usbkbd.umockdev`, `TOSHIBA_NVME.txt`, `simple-nvme.tar.xz`). */
export function recordedFixture(name: string): string {
  if (name === '' || name.split(/[\\/]/).some((part) => part === '..')) {
    throw new Error(`not a recording name: '${name}'`);
  }
  const dir = recordedFixturesDir();
  const file = path.join(dir, name);
  if (!fs.existsSync(file)) {
    const known = fs.readdirSync(dir).sort().join(', ');
    throw new Error(`no recording '${name}' in ${dir}; there are: ${known}`);
  }
  return file;
}

function isDirectory(file: string): boolean {
  try {
    return fs.statSync(file).isDirectory();
  } catch {
    return false;
  }
}
