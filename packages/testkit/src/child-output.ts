import { type ChildProcess } from 'node:child_process';

/** What a child process said and how it ended. */
export interface ChildOutput {
  readonly code: number | null;
  readonly out: string;
  readonly err: string;
}

/** Collects a spawned child's stdout and stderr (both piped) until it closes. */
export function childOutput(child: ChildProcess): Promise<ChildOutput> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (text: string) => (out += text));
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (err += text));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, out, err }));
  });
}
