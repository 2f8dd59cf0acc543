import * as fs from 'node:fs';
import { type ModuleReference } from '@devgate/core';

/** Where devgated's systemd unit reads its configuration. */
export const SYSTEM_CONFIG = '/etc/devgate/devgated.json';

/**
 * The driver packages devgated's configuration names (`modules`), for the CLI without devgated:
 * `$DEVGATE_CONFIG`, else the system configuration when there is one. No configuration, no
 * packages: the built-in drivers only.
 */
export async function configuredModules(env: NodeJS.ProcessEnv = process.env): Promise<readonly ModuleReference[]> {
  const file = env.DEVGATE_CONFIG || (fs.existsSync(SYSTEM_CONFIG) ? SYSTEM_CONFIG : undefined);
  if (!file) return [];
  const { loadConfig } = await import('@devgate/service');
  return loadConfig(file).modules ?? [];
}
