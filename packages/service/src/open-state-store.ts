import * as fs from 'node:fs';
import * as path from 'node:path';
import { SqliteStateStore } from './store/state-store.js';

/** The state file in `stateDir`, made if needed: devgated's, and the CLI's when devgated is not running. */
export function openStateStore(stateDir: string): SqliteStateStore {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o750 });
  return new SqliteStateStore(path.join(stateDir, 'state.db'));
}
