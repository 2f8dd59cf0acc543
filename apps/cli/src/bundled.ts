// What bin/*.cjs load: esbuild bundles this file, with everything it imports, into one file,
// dist/bundle/cli.js (bundle.cjs, run by the build), so a command reads one file instead of
// resolving and reading some 440 modules (ADR 0014).
import 'reflect-metadata';
import * as NodeModule from 'node:module';
import * as path from 'node:path';
import * as core from '@devgate/core';
import { type ProgramName, runAsMain } from './main.js';

export { reportDaemonError } from './main.js';

/**
 * Driver packages get the kernel's own @devgate/core (ADR 0012): the module loader hands them the
 * file that `require.resolve('@devgate/core')` names. In the bundle the kernel's core is the copy
 * inside it, so that copy goes into Node's module cache under that file's name: a driver package
 * loaded by the bundled CLI shares its error catalogue, tokens and API version. (Unbundled, the
 * file's own module is already there, and this changes nothing.)
 */
export function shareBundledCore(): void {
  // The kernel's core by name, as the module loader resolves it (not an import).
  const file = require.resolve('@devgate/core');
  if (require.cache[file]) return;
  const module = new NodeModule.Module(file);
  module.filename = file;
  module.paths = (NodeModule as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(
    path.dirname(file),
  );
  module.exports = core;
  module.loaded = true;
  require.cache[file] = module;
}

/** The launcher's entry: `bin/<name>.cjs` calls this with its own name. */
export function run(fallback: ProgramName): void {
  core.beforeDriverPackages(shareBundledCore);
  runAsMain(fallback);
}
