import 'reflect-metadata';
import * as path from 'node:path';
import { type Command, CommanderError, Option } from 'commander';
import { DevgateError, DriverContractError } from '@devgate/core';
import { type Io, exitQuietlyOnClosedPipe, processIo } from './io.js';
import { devgateProgram } from './devgate-command.js';
import { qvmDeviceProgram } from './qvm-device-command.js';

export const PROGRAMS = ['devgate', 'qvm-device', 'qvm-block', 'qvm-usb', 'qvm-pci'] as const;
export type ProgramName = (typeof PROGRAMS)[number];

/**
 * Runs one command line and returns its exit code: 0 success, 1 runtime error, 2 usage error
 * (as Qubes' argparse-based tools do).
 */
export async function run(prog: ProgramName, argv: readonly string[], io: Io = processIo): Promise<number> {
  let program =
    prog === 'devgate'
      ? devgateProgram(io)
      : qvmDeviceProgram(prog, prog === 'qvm-device' ? undefined : prog.slice('qvm-'.length), io);
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

function isClassWord(program: Command, word: string | undefined): boolean {
  if (word === undefined || word === 'help' || !/^[a-z][a-z0-9-]{0,31}$/.test(word)) return false;
  return !program.commands.some((command) => command.name() === word || command.aliases().includes(word));
}

function reportError(prog: string, program: Command, error: unknown, io: Io): number {
  if ((error as { silent?: boolean }).silent) return (error as { exitCode?: number }).exitCode ?? 1;
  if (error instanceof CommanderError) {
    if (error.exitCode === 0) return 0; // --help, --version
    io.err(`usage: ${prog} ${program.usage()}\n${prog}: error: ${error.message.replace(/^error: /, '')}\n`);
    return 2;
  }
  if (error instanceof DevgateError) {
    if (error.kind === 'usage') io.err(`usage: ${prog} ${program.usage()}\n`);
    io.err(`${prog}: error: ${error.message}\n`);
    if (error.hint) io.err(`${prog}: hint: ${error.hint}\n`);
    return error.kind === 'usage' ? 2 : 1;
  }
  const detail = error instanceof DriverContractError ? error.message : String((error as Error)?.stack ?? error);
  io.err(`${prog}: error: internal error, please report it: ${detail}\n`);
  return 1;
}

/** Options every program takes to choose where devices are read from. */
export function addHostOptions(command: Command): Command {
  return command
    .addOption(new Option('--sysroot <dir>', 'read sys/, dev/, proc/ and run/udev/ under DIR instead of /'))
    .addOption(
      new Option('--recording <file>', 'read a recorded host (umockdev, udevadm export-db, sysfs tarball)').conflicts(
        'sysroot',
      ),
    )
    .addOption(new Option('--backend <name>', 'the backend domain name of these devices').default('dom0'))
    .addOption(new Option('--domains <file>', 'the domain registry').env('DEVGATE_DOMAINS'))
    .addOption(new Option('--socket <path>', "devgated's API socket").env('DEVGATE_SOCKET'));
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
