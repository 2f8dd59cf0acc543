import { type Io } from './io.js';
import { type ProgramName, run } from './main.js';

/** Runs a command in-process and captures what it prints. */
export async function runCaptured(
  prog: ProgramName,
  argv: readonly string[],
  isTTY = false,
): Promise<{ code: number; out: string; err: string; notices: string }> {
  let out = '';
  let err = '';
  let notices = '';
  const io: Io = {
    out: (t) => void (out += t),
    err: (t) => void (err += t),
    isTTY,
    notice: (t) => void (notices += t),
  };
  const code = await run(prog, argv, io);
  return { code, out, err, notices };
}
