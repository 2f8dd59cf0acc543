import fs from 'node:fs';
import path from 'node:path';
import { openStateStore } from './open-state-store';
import { TempDir } from './store/testing/temp-store';

// The audit log says who used which device and when: only devgated's user reads state.db (the read
// group reads through the API, ADR 0004), whatever the umask, and whether or not stateDir was there.
describe('openStateStore: state.db is readable by its owner only', () => {
  let tmp: TempDir;
  beforeEach(() => (tmp = new TempDir()));
  afterEach(() => tmp.remove());
  const modeOf = (file: string) => (fs.statSync(file).mode & 0o777).toString(8);
  const stateFiles = () =>
    fs
      .readdirSync(tmp.dir)
      .filter((name) => name.startsWith('state.db'))
      .sort();

  it('creates it 0600, with its WAL files, in a stateDir that already exists', () => {
    fs.chmodSync(tmp.dir, 0o755);
    const store = openStateStore(tmp.dir);
    try {
      store.audit.append({ actor: 'test', action: 'attach', outcome: 'ok' });
      expect(stateFiles()).toEqual(['state.db', 'state.db-shm', 'state.db-wal']);
      for (const name of stateFiles()) expect([name, modeOf(path.join(tmp.dir, name))]).toEqual([name, '600']);
    } finally {
      store.dispose();
    }
  });

  it('tightens a state.db (and WAL files) an older devgated left readable', () => {
    openStateStore(tmp.dir).dispose();
    const file = path.join(tmp.dir, 'state.db');
    fs.chmodSync(file, 0o644);
    fs.writeFileSync(`${file}-wal`, '', { mode: 0o644 });
    fs.chmodSync(`${file}-wal`, 0o664);
    const store = openStateStore(tmp.dir);
    try {
      expect(modeOf(file)).toBe('600');
      expect(modeOf(`${file}-wal`)).toBe('600');
      expect(store.audit.query({})).toEqual([]);
    } finally {
      store.dispose();
    }
  });
});
