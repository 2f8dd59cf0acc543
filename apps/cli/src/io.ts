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
