import * as fs from 'node:fs';
import * as path from 'node:path';
import { Errors } from '@devgate/core';
import { SqliteStateStore } from './store/state-store.js';

/** The owner's only: the audit log says who used which device, when (the read group reads it through the API). */
const STATE_FILE_MODE = 0o600;

/** The state file in `stateDir`, made if needed: devgated's, and the CLI's when devgated is not running. */
export function openStateStore(stateDir: string): SqliteStateStore {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o750 });
  const file = path.join(stateDir, 'state.db');
  restrictStateFiles(file);
  return new SqliteStateStore(file);
}

/**
 * Made 0600 before SQLite opens it (SQLite would take the umask's 0644, and gives its WAL files the
 * database's mode), and left tightened if an older devgated made it, or its WAL files, readable.
 * Only when stateDir was new did its 0750 hide them.
 */
function restrictStateFiles(file: string): void {
  try {
    fs.closeSync(fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, STATE_FILE_MODE));
    for (const each of [file, `${file}-wal`, `${file}-shm`, `${file}-journal`]) {
      const stat = fs.statSync(each, { throwIfNoEntry: false });
      if (stat && (stat.mode & 0o077) !== 0) fs.chmodSync(each, stat.mode & 0o700);
    }
  } catch (error) {
    throw Errors.stateUnavailable({ file, reason: (error as Error).message });
  }
}
