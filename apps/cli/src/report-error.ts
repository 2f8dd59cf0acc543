import { type Command, CommanderError } from 'commander';
import { DevgateError, DriverContractError, Errors } from '@devgate/core';
import { type Io } from './io.js';

/**
 * Prints what made a command line fail, in argparse's shape (`usage:` line, `prog: error: ...`), and
 * returns its exit code: 2 for a usage error, 1 for a runtime one, 0 for --help and --version.
 */
export function reportError(prog: string, program: Command, error: unknown, io: Io): number {
  if ((error as { silent?: boolean }).silent) return (error as { exitCode?: number }).exitCode ?? 1;
  if (error instanceof CommanderError) {
    if (error.exitCode === 0) return 0; // --help, --version
    io.err(`usage: ${prog} ${program.usage()}\n${prog}: error: ${error.message.replace(/^error: /, '')}\n`);
    return 2;
  }
  if (error instanceof DevgateError) {
    const usage = error.kind === 'usage' || unknownVmName(prog, error);
    if (usage) io.err(`usage: ${prog} ${program.usage()}\n`);
    io.err(`${prog}: error: ${error.message}\n`);
    if (error.hint) io.err(`${prog}: hint: ${error.hint}\n`);
    return usage ? 2 : 1;
  }
  const detail = error instanceof DriverContractError ? error.message : String((error as Error)?.stack ?? error);
  io.err(`${prog}: error: internal error, please report it: ${detail}\n`);
  return 1;
}

/**
 * Qubes' qvm-* tools check VMNAME while parsing (argparse: usage, exit 2). devgated refuses an unknown
 * frontend at run time (DG_NO_CONNECTOR); reported here, so the quick path's refusal reads the same.
 */
function unknownVmName(prog: string, error: DevgateError): boolean {
  return prog.startsWith('qvm-') && error.code === Errors.noConnector.code;
}
