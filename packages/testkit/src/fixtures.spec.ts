import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { recordedFixture, recordedFixturesDir } from './fixtures.js';

describe('recordedFixture', () => {
  it('finds shared/fixtures/recorded beside the repository', () => {
    const file = recordedFixture('usbkbd.umockdev');
    expect(fs.statSync(file).isFile()).toBe(true);
    expect(path.dirname(file).endsWith(path.join('shared', 'fixtures', 'recorded'))).toBe(true);
    // The repository root (where the root package.json is) and shared/ have the same parent.
    const repoRoot = path.resolve(__dirname, '../../..');
    expect(path.dirname(path.dirname(path.dirname(path.dirname(file))))).toBe(path.dirname(repoRoot));
  });

  it('lists what exists when a name is unknown', () => {
    expect(() => recordedFixture('nope.umockdev')).toThrow(
      /no recording 'nope.umockdev' in .*there are: .*usbkbd.umockdev/,
    );
  });

  it('refuses names that climb out of the directory', () => {
    expect(() => recordedFixture('../SOURCES.md')).toThrow(/not a recording name/);
    expect(() => recordedFixture('')).toThrow(/not a recording name/);
  });

  it('says clearly when shared/ cannot be found', () => {
    const lonely = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-fixtures-spec-'));
    try {
      expect(() => recordedFixturesDir(lonely)).toThrow(
        /recorded fixtures not found: no shared\/fixtures\/recorded directory/,
      );
    } finally {
      fs.rmSync(lonely, { recursive: true, force: true });
    }
  });
});
