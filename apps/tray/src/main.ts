import 'reflect-metadata';
import { Command, CommanderError, Option } from 'commander';
import { resolveSocket } from './daemon-api.js';
import { AlreadyRunning, startTray } from './tray-module.js';

export interface MainIo {
  readonly err: (text: string) => void;
  readonly out: (text: string) => void;
}

const processIo: MainIo = {
  err: (text) => process.stderr.write(text),
  out: (text) => process.stdout.write(text),
};

/**
 * `devgate-tray [--socket PATH] [--no-notifications] [--no-tray] [--settings-command CMD]`: runs until
 * "Quit", SIGTERM/SIGINT, or the session bus goes away. Exit codes: 0 stopped, 1 runtime error,
 * 2 usage error.
 */
export async function main(argv: readonly string[], io: MainIo = processIo, signals = true): Promise<number> {
  const program = new Command('devgate-tray')
    .description('desktop notifications and a tray menu for devgated: attach devices to VMs as they appear')
    .addOption(
      new Option('--socket <path>', "devgated's API socket (state changes go to PATH.rw)").env('DEVGATE_SOCKET'),
    )
    .addOption(new Option('--no-notifications', 'no desktop notifications, only the tray icon'))
    .addOption(new Option('--no-tray', 'no tray icon, only notifications'))
    .addOption(
      new Option('--settings-command <cmd>', 'shell command that "Settings…" runs').env('DEVGATE_TRAY_SETTINGS'),
    )
    .addOption(
      new Option('--max-vms <n>', 'at most this many "Attach to" actions per notification')
        .argParser(positive)
        .default(3),
    )
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err });
  try {
    program.parse([...argv], { from: 'user' });
  } catch (error) {
    return error instanceof CommanderError && error.exitCode === 0 ? 0 : 2;
  }
  const options = program.opts<{
    socket?: string;
    notifications: boolean;
    tray: boolean;
    settingsCommand?: string;
    maxVms: number;
  }>();
  const log = (message: string) => io.err(`devgate-tray: ${message}\n`);
  let tray;
  try {
    tray = await startTray({
      socket: resolveSocket(options.socket),
      notifications: options.notifications,
      trayIcon: options.tray,
      settingsCommand: options.settingsCommand ? ['/bin/sh', '-c', options.settingsCommand] : undefined,
      maxTargets: options.maxVms,
      log,
    });
  } catch (error) {
    if (error instanceof AlreadyRunning) {
      log(error.message);
      return 0;
    }
    io.err(`devgate-tray: error: ${(error as Error).message}\n`);
    return 1;
  }
  log(`running (devgated socket ${tray.api.socket}${tray.icon ? `, tray item ${tray.icon.service}` : ''})`);
  const stopOn = (signal: NodeJS.Signals) => {
    const handler = () => tray.dispose();
    process.once(signal, handler);
    return () => process.removeListener(signal, handler);
  };
  const unhook = signals ? [stopOn('SIGTERM'), stopOn('SIGINT'), stopOn('SIGHUP')] : [];
  const reason = await tray.done;
  for (const undo of unhook) undo();
  tray.dispose();
  log(`stopped (${reason})`);
  return reason === 'quit' || reason === 'stopped' ? 0 : 1;
}

function positive(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 10)
    throw new CommanderError(2, 'devgate-tray.usage', `--max-vms must be 0..10, not '${value}'`);
  return n;
}

/** The bin launcher's entry point. */
export async function runAsMain(): Promise<void> {
  process.exitCode = await main(process.argv.slice(2));
  // The bus socket and timers are closed; nothing should keep the process, but do not hang if one does.
  setTimeout(() => process.exit(), 2000).unref();
}
