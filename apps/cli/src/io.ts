/** Where a command writes; tests capture it, `runAsMain` binds it to the process. */
export interface Io {
  out(text: string): void;
  err(text: string): void;
  /** Qubes prints table headers only when stdout is a terminal. */
  readonly isTTY: boolean;
  /** Tells a person something about how the command ran (stderr, and only on a terminal). */
  notice(text: string): void;
}

export const processIo: Io = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  isTTY: Boolean(process.stdout.isTTY),
  notice: (text) => void (process.stderr.isTTY && process.stderr.write(`note: ${text}`)),
};

/** The exit status of a process that SIGPIPE ended, as a shell reports it (128 + 13). */
export const CLOSED_PIPE_STATUS = 141;

let quietOnClosedPipe = false;

/**
 * `devgate list --json | head -c 200`: once the reader has gone, the rest of the output has nowhere
 * to go. coreutils die of SIGPIPE there, silently; Node ignores SIGPIPE and reports EPIPE as an
 * unhandled 'error' with a stack trace instead. This ends the process at once, printing nothing,
 * with the status a shell gives a process SIGPIPE ended (141), so `set -o pipefail` sees what it
 * sees with coreutils. Other write errors (ENOSPC, EIO) still surface.
 */
export function exitQuietlyOnClosedPipe(): void {
  if (quietOnClosedPipe) return;
  quietOnClosedPipe = true;
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE') throw error;
      process.exit(CLOSED_PIPE_STATUS);
    });
  }
}
