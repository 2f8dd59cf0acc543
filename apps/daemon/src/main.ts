import 'reflect-metadata';
import { Command, Option } from 'commander';
import pino from 'pino';
import { DevgateError } from '@devgate/core';
import {
  checkConfig,
  type DaemonConfig,
  defaultConfig,
  formatIssue,
  loadConfig,
  readConfigFile,
} from '@devgate/service';
import { Devgated } from './devgated.js';

/** `devgated [--config FILE] [--socket PATH] [--state-dir DIR]`, or `devgated --check-config FILE`. */
export async function main(argv: readonly string[]): Promise<number> {
  const program = new Command('devgated')
    .description('the devgate daemon: owns device state and serves the API')
    .addOption(new Option('--config <file>', 'configuration file (JSON)'))
    .addOption(new Option('--socket <path>', 'API socket (state changes go to PATH.rw)').env('DEVGATE_SOCKET'))
    .addOption(new Option('--state-dir <dir>', 'where the SQLite state lives'))
    .addOption(new Option('--check-config <file>', 'check a configuration file and exit'))
    .exitOverride();
  try {
    program.parse([...argv], { from: 'user' });
  } catch (error) {
    return (error as { exitCode?: number }).exitCode === 0 ? 0 : 2;
  }
  const options = program.opts<{ config?: string; socket?: string; stateDir?: string; checkConfig?: string }>();
  if (options.checkConfig) return checkConfigFile(options.checkConfig);

  // Logs go to stdout as JSON lines, which journald keeps with their fields.
  const log = pino({ level: process.env.DEVGATE_LOG_LEVEL ?? 'info', base: { service: 'devgated' } });
  let config: DaemonConfig;
  try {
    const loaded = options.config ? loadConfig(options.config) : defaultConfig();
    config = {
      ...loaded,
      socket: options.socket ?? loaded.socket,
      stateDir: options.stateDir ?? loaded.stateDir,
    };
  } catch (error) {
    process.stderr.write(`devgated: error: ${(error as Error).message}\n`);
    return 2;
  }
  try {
    const daemon = await Devgated.start(config, log);
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        log.info({ signal }, 'stopping');
        void daemon.stop().then(resolve);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
    return 0;
  } catch (error) {
    const coded = error instanceof DevgateError ? `${error.code}: ${error.message}` : String(error);
    log.fatal({ err: error }, 'devgated could not start');
    process.stderr.write(`devgated: error: ${coded}\n`);
    return 1;
  }
}

function checkConfigFile(file: string): number {
  let text: string;
  try {
    text = readConfigFile(file);
  } catch (error) {
    process.stderr.write(`devgated: error: ${(error as Error).message}\n`);
    return 1;
  }
  const { issues } = checkConfig(text, file);
  for (const issue of issues) process.stderr.write(`${formatIssue(issue)}\n`);
  if (issues.length === 0) process.stdout.write(`${file}: ok\n`);
  return issues.length === 0 ? 0 : 1;
}
