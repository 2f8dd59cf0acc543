import * as fs from 'node:fs';
import { type ModuleReference } from '@devgate/core';

/** Where devgated's systemd unit reads its configuration. */
export const SYSTEM_CONFIG = '/etc/devgate/devgated.json';

/** What the CLI without devgated takes from devgated's configuration. */
export interface InProcessConfig {
  /** Driver packages besides the built-in ones (`modules`). */
  readonly modules: readonly ModuleReference[];
  /** devgated's state (deny lists, assignments, audit): `$DEVGATE_STATE_DIR`, else the configuration's `stateDir`. */
  readonly stateDir: string;
  /** The domain registry: `$DEVGATE_DOMAINS`, else the configuration's `domains`; undefined for the default. */
  readonly domains?: string;
}

/**
 * devgated's configuration as the CLI without devgated reads it: `$DEVGATE_CONFIG`, else the system
 * configuration when there is one, so an in-process attach is held to the deny lists devgated keeps
 * and sees the domains it sees. The environment wins over the file (as for devgated's own
 * defaults), and a command line's `--domains` wins over both (the caller's). No configuration: the
 * built-in drivers, the default state directory and registry.
 */
export async function inProcessConfig(env: NodeJS.ProcessEnv = process.env): Promise<InProcessConfig> {
  const file = env.DEVGATE_CONFIG || (fs.existsSync(SYSTEM_CONFIG) ? SYSTEM_CONFIG : undefined);
  const { defaultConfig, loadConfig } = await import('@devgate/service');
  // loadConfig takes the environment's DEVGATE_STATE_DIR only as a default the file overrides.
  const config = file ? loadConfig(file) : defaultConfig(env);
  return {
    modules: config.modules ?? [],
    stateDir: env.DEVGATE_STATE_DIR || config.stateDir,
    domains: env.DEVGATE_DOMAINS || config.domains,
  };
}
