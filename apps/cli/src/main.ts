import 'reflect-metadata';
import * as path from 'node:path';
import { type Command } from 'commander';
import { type Io, exitQuietlyOnClosedPipe, processIo } from './io.js';
import { devgateProgram } from './devgate-command.js';
import { qvmDeviceProgram } from './qvm-device-command.js';
import { reportError } from './report-error.js';
import { fromApiError } from './device-access.js';
import { type ApiError } from '@devgate/client';

export const PROGRAMS = ['devgate', 'qvm-device', 'qvm-block', 'qvm-usb', 'qvm-pci'] as const;
export type ProgramName = (typeof PROGRAMS)[number];

/**
 * Runs one command line and returns its exit code: 0 success, 1 runtime error, 2 usage error
 * (as Qubes' argparse-based tools do).
 */
export async function run(prog: ProgramName, argv: readonly string[], io: Io = processIo): Promise<number> {
  let program = programFor(prog, io);
  // `devgate CLASS ...` is `qvm-device CLASS ...`: any word that is not one of devgate's own
  // commands names a class, which a loaded driver must have (checked when it is used).
  if (prog === 'devgate' && isClassWord(program, argv[0])) program = qvmDeviceProgram('devgate', undefined, io);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (error) {
    return reportError(prog, program, error, io);
  }
}

function programFor(prog: ProgramName, io: Io): Command {
  return prog === 'devgate'
    ? devgateProgram(io)
    : qvmDeviceProgram(prog, prog === 'qvm-device' ? undefined : prog.slice('qvm-'.length), io);
}

/**
 * An error devgated answered to a command the quick path (quick.ts) sent, reported as `run` reports
 * the same error of the same command, with the same exit code.
 */
export function reportDaemonError(prog: ProgramName, error: ApiError, io: Io = processIo): number {
  return reportError(prog, programFor(prog, io), fromApiError(error), io);
}

function isClassWord(program: Command, word: string | undefined): boolean {
  if (word === undefined || word === 'help' || !/^[a-z][a-z0-9-]{0,31}$/.test(word)) return false;
  return !program.commands.some((command) => command.name() === word || command.aliases().includes(word));
}

/** The launcher's entry: `bin/<name>.cjs` calls this with its own name. */
export function runAsMain(fallback: ProgramName): void {
  exitQuietlyOnClosedPipe();
  const invoked = path.basename(process.argv[1] ?? '').replace(/\.c?js$/, '');
  const prog = (PROGRAMS as readonly string[]).includes(invoked) ? (invoked as ProgramName) : fallback;
  run(prog, process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (error) => {
      process.stderr.write(`${prog}: error: ${String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
