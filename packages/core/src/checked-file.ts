import * as fs from 'node:fs';

/**
 * Opened at once, whatever the file is: a FIFO's blocking open waits for a writer, and a reader of a
 * configuration or a registry would hang there before a word. Symlinks are followed.
 */
const NON_BLOCKING_OPEN = fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY;

/**
 * A small file's text, read once `check` accepted the file as opened (so that what is checked is
 * what is read); `check` throws the caller's own refusal, of anything that is not a regular file
 * among others. The file system's errors come as they are (ENOENT, EACCES).
 */
export function readCheckedFile(file: string, check: (opened: fs.Stats, fd: number) => void): string {
  const fd = fs.openSync(file, NON_BLOCKING_OPEN);
  try {
    check(fs.fstatSync(fd), fd);
    return fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
}
