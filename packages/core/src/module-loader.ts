/**
 * Driver packages named by a configuration (`"modules": ["@acme/devgate-driver-serial", "./serial"]`),
 * found as Node finds an installed package: a name from the `node_modules` directories at and above
 * the configuration's directory, a path relative to that directory (or absolute). Each is required,
 * its DevgateModule taken from its exports (`devgateModule`, else `default`, else the exports
 * themselves), and loaded isolated: a package that is missing, throws, exports no module, or whose
 * drivers the kernel refuses (API version, duplicate id, missing dependency) is refused with a coded
 * error that names it, and the others load.
 *
 * A driver package imports `@devgate/core` (and rxjs) as a peer: the one it gets is the kernel's own,
 * whatever its node_modules hold, so its tokens, errors and types are the kernel's (as VS Code hands
 * extensions its `vscode` module). rxjs is the package's own when it has one, else the kernel's.
 */
import * as fs from 'node:fs';
import NodeModule from 'node:module';
import * as path from 'node:path';
import { type DevgateError, Errors } from './errors.js';
import { type Kernel, type ModuleOrigin, type ModuleStatus, labelOf } from './kernel.js';
import { type DevgateModule } from './plugin-api.js';
import { sanitizeText } from './sanitize.js';

export interface ModuleReference {
  /** A package name, or a path (`./x`, `../x`, `/x`) to a package directory or file. */
  readonly specifier: string;
  /** The directory names and relative paths are resolved from (the configuration file's). */
  readonly from: string;
}

/** Whether a specifier is a path rather than a package name. */
export function isPathSpecifier(specifier: string): boolean {
  return specifier.startsWith('./') || specifier.startsWith('../') || path.isAbsolute(specifier);
}

/** npm's rule for package names (scoped or not), at most 214 characters. */
export const PACKAGE_NAME = /^(?:@[a-z0-9][a-z0-9._~-]*\/)?[a-z0-9][a-z0-9._~-]*$/;

/**
 * Loads every package into the kernel, each isolated, in order. Returns each one's status; never
 * throws for a package's fault.
 */
export function loadDriverPackages(kernel: Kernel, references: readonly ModuleReference[]): ModuleStatus[] {
  return references.map((reference) => {
    let origin: ModuleOrigin = { kind: 'package', specifier: reference.specifier };
    try {
      const found = requireDriverPackage(reference);
      origin = found.origin;
      return kernel.loadIsolated(found.module, found.origin);
    } catch (error) {
      const found = (error as { origin?: ModuleOrigin }).origin;
      return kernel.refused(found ?? origin, error);
    }
  });
}

/** Finds, requires and checks one package; throws a coded error carrying what was found of it. */
export function requireDriverPackage(reference: ModuleReference): { module: DevgateModule; origin: ModuleOrigin } {
  const { specifier, from } = reference;
  let origin: ModuleOrigin = { kind: 'package', specifier };
  const fail = (error: DevgateError): never => {
    throw Object.assign(error, { origin });
  };
  if (!isPathSpecifier(specifier) && !PACKAGE_NAME.test(specifier)) {
    fail(Errors.moduleNotFound({ module: specifier, from, reason: 'not a package name or a path' }));
  }
  let file: string;
  try {
    const base = NodeModule.createRequire(path.join(path.resolve(from), 'devgate-modules.js'));
    file = base.resolve(isPathSpecifier(specifier) ? path.resolve(from, specifier) : specifier);
  } catch (error) {
    return fail(Errors.moduleNotFound({ module: specifier, from, reason: reasonOf(error) }));
  }
  const root = packageRoot(file);
  const manifest = root ? readManifest(root) : undefined;
  origin = { kind: 'package', specifier, name: manifest?.name, version: manifest?.version, path: file };
  providePeers(root ?? path.dirname(file));
  // (Not `exports`: in CommonJS output that name is the module's own.)
  let loaded: unknown;
  try {
    // A driver package is CommonJS, found at run time: this is what require() is for.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    loaded = require(file);
  } catch (error) {
    return fail(
      Errors.moduleLoadFailed({ module: labelOf(origin), reason: `it threw while loading: ${reasonOf(error)}` }),
    );
  }
  const module = moduleIn(loaded);
  if (!module) {
    return fail(
      Errors.moduleLoadFailed({
        module: labelOf(origin),
        reason: 'it exports no DevgateModule ({ id, register }) as devgateModule or default',
      }),
    );
  }
  return { module, origin };
}

function moduleIn(loaded: unknown): DevgateModule | undefined {
  const candidates = [
    (loaded as { devgateModule?: unknown } | undefined)?.devgateModule,
    (loaded as { default?: unknown } | undefined)?.default,
    loaded,
  ];
  return candidates.find(
    (c): c is DevgateModule =>
      typeof c === 'object' &&
      c !== null &&
      typeof (c as DevgateModule).id === 'string' &&
      typeof (c as DevgateModule).register === 'function',
  );
}

/** The directory of the package.json that owns a file. */
function packageRoot(file: string): string | undefined {
  for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) return undefined;
  }
}

function readManifest(root: string): { name?: string; version?: string } | undefined {
  try {
    const json = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as Record<string, unknown>;
    const text = (value: unknown) => (typeof value === 'string' ? sanitizeText(value, 214) : undefined);
    return { name: text(json.name), version: text(json.version) };
  } catch {
    return undefined;
  }
}

function reasonOf(error: unknown): string {
  const message = error instanceof Error ? error.message.split('\n')[0] : String(error);
  return sanitizeText(message, 300) ?? 'unknown error';
}

// -- the kernel's own @devgate/core (and rxjs, tsyringe) for driver packages

/** Package directories whose files get the kernel's peers. */
const pluginRoots = new Set<string>();
let hooked = false;
let beforeFirstPackage: (() => void) | undefined;

/**
 * Runs `prepare` once, before the first driver package is required: where the kernel's core is not
 * the file `require.resolve('@devgate/core')` names (the CLI's bundle holds a copy), it puts that copy
 * in the module cache there. Only when a package is loaded: resolving a package costs milliseconds
 * at every start of a command that loads none.
 */
export function beforeDriverPackages(prepare: () => void): void {
  beforeFirstPackage = prepare;
}

/** What a driver package's `require(name)` resolves to when it is the kernel's to give. */
function hostPeer(request: string): string | undefined {
  // The package's own entry, resolved by name to hand it to driver packages (not an import).
  // eslint-disable-next-line @nx/enforce-module-boundaries
  if (request === '@devgate/core') return require.resolve('@devgate/core');
  for (const peer of ['rxjs', 'tsyringe']) {
    if (request === peer || request.startsWith(`${peer}/`)) return require.resolve(request);
  }
  return undefined;
}

function providePeers(root: string): void {
  pluginRoots.add(realpath(root) + path.sep);
  if (hooked) return;
  hooked = true;
  beforeFirstPackage?.();
  type Resolve = (request: string, parent: { filename?: string } | undefined, ...rest: unknown[]) => string;
  const node = NodeModule as unknown as { _resolveFilename: Resolve };
  const original = node._resolveFilename;
  node._resolveFilename = function (this: unknown, request, parent, ...rest) {
    const inPlugin =
      parent?.filename !== undefined && [...pluginRoots].some((root) => parent.filename!.startsWith(root));
    if (!inPlugin || !/^(@devgate\/core|rxjs|tsyringe)(\/|$)/.test(request)) {
      return original.call(this, request, parent, ...rest);
    }
    // The kernel's own core, always: one catalogue, one set of tokens.
    if (request === '@devgate/core') return hostPeer(request)!;
    try {
      return original.call(this, request, parent, ...rest);
    } catch (error) {
      const provided = hostPeer(request);
      if (provided) return provided;
      throw error;
    }
  };
}

function realpath(dir: string): string {
  try {
    return fs.realpathSync(dir);
  } catch {
    return path.resolve(dir);
  }
}
