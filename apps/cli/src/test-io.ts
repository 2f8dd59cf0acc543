import { type Io } from './io.js';
import { type ProgramName, run } from './main.js';

/** An Io that keeps what a command prints. */
export function captureIo(isTTY = false): { io: Io; out: () => string; err: () => string; notices: () => string } {
  let out = '';
  let err = '';
  let notices = '';
  const io: Io = {
    out: (t) => void (out += t),
    err: (t) => void (err += t),
    isTTY,
    notice: (t) => void (notices += t),
  };
  return { io, out: () => out, err: () => err, notices: () => notices };
}

/** Runs a command in-process and captures what it prints. */
export async function runCaptured(
  prog: ProgramName,
  argv: readonly string[],
  isTTY = false,
): Promise<{ code: number; out: string; err: string; notices: string }> {
  const captured = captureIo(isTTY);
  const code = await run(prog, argv, captured.io);
  return { code, out: captured.out(), err: captured.err(), notices: captured.notices() };
}
