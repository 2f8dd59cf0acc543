// The CLI's bundle (ADR 0014): src/bundled.ts and everything it imports, our packages from their
// TypeScript sources (the `@devgate/source` condition) and their npm dependencies as ES modules, in
// one file, dist/bundle/cli.js, which bin/*.cjs load (and dist/bundle/quick.js, the quick path). ES modules let esbuild keep only what is used
// and put every module in one scope: nothing to resolve, read or wrap per module at start. Run by
// the build target after tsc (package.json, nx.targets.build), which checks the types. Then V8's
// code cache of the bundle, dist/bundle/cli.js.cache, which bin/load-bundle.cjs gives V8.
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const vm = require('node:vm');
const Module = require('node:module');
const { execFileSync } = require('node:child_process');
const esbuild = require('esbuild');
const { cliBinLine } = require('./bin-line.cjs');

const CLI = __dirname;
const OUT = path.join(CLI, 'dist/bundle');
const BUNDLE = path.join(OUT, 'cli.js');

/** The directory of the package.json above `file`, and the package's name. */
function packageOf(file) {
  for (let dir = path.dirname(file); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const manifest = path.join(dir, 'package.json');
    if (fs.existsSync(manifest)) return { root: dir, name: JSON.parse(fs.readFileSync(manifest, 'utf8')).name };
  }
  throw new Error(`no package.json above ${file}`);
}

/**
 * A bundled module's `__dirname` is the bundle's: each of our files that uses it gets its own back
 * (guest-lab finds its guest files, the CLI its package.json). The CLI's own files are found from
 * the bundle; another package's from where Node finds that package, as it would have loaded it.
 */
const ownDirname = {
  name: 'own-dirname',
  setup(build) {
    build.onLoad({ filter: /\.ts$/ }, (args) => {
      const contents = fs.readFileSync(args.path, 'utf8');
      if (!/\b__(dirname|filename)\b/.test(contents)) return undefined;
      const { root, name } = packageOf(args.path);
      const base =
        root === CLI
          ? `require("node:path").join(__bundle_dirname, ${JSON.stringify(path.relative(OUT, root))})`
          : `require("node:path").dirname(require.resolve(${JSON.stringify(`${name}/package.json`)}))`;
      const dir = path.relative(root, path.dirname(args.path));
      const file = path.relative(root, args.path);
      // Module-scoped functions (the bundle is one scope), which every use in the file calls: found
      // when used, not at every start (require.resolve costs milliseconds).
      const id = `_${name.replace(/\W/g, '_')}_${path.basename(args.path, '.ts').replace(/\W/g, '_')}`;
      return {
        contents:
          `function ${id}_dirname() { return require("node:path").join(${base}, ${JSON.stringify(dir)}); }\n` +
          `function ${id}_filename() { return require("node:path").join(${base}, ${JSON.stringify(file)}); }\n` +
          contents.replace(/\b__dirname\b/g, `${id}_dirname()`).replace(/\b__filename\b/g, `${id}_filename()`),
        loader: 'ts',
      };
    });
  },
};

/** rxjs as ES modules (its `node` condition names its CommonJS build, which cannot be trimmed). */
const rxjsEsm = {
  name: 'rxjs-esm',
  setup(build) {
    const dist = path.join(path.dirname(require.resolve('rxjs/package.json')), 'dist/esm');
    build.onResolve({ filter: /^rxjs(\/operators)?$/ }, (args) => ({
      path: path.join(dist, args.path === 'rxjs' ? 'index.js' : 'operators/index.js'),
    }));
  },
};

/**
 * Node's modules a listing does not use, loaded on first use instead of at every start (about 20 ms
 * together on this machine kind): child_process (commander requires it at its top; blkid, udevadm
 * and virsh when they run), crypto (temporary names, ids), readline (prompts), zlib (recordings).
 */
const LAZY_BUILTINS = new Set(['child_process', 'crypto', 'readline', 'zlib']);

/**
 * A module standing for a lazy builtin: an object with a getter for each of its exports (named at
 * build time, by this Node), which loads the builtin on the first one read. Importers read the
 * exports at the call (`(0, ns.spawn)(...)`), so nothing loads until something is called.
 */
function lazyBuiltin(name) {
  const exported = Object.keys(require(`node:${name}`)).filter((key) => key !== 'default');
  return [
    'let loaded;',
    `const load = () => (loaded ??= require("node:${name}"));`,
    `for (const key of ${JSON.stringify(exported)}) {`,
    '  Object.defineProperty(exports, key, { get: () => load()[key], enumerable: true });',
    '}',
  ].join('\n');
}

/**
 * Node's own modules, one namespace each for the whole bundle: esbuild otherwise copies a module's
 * every property into a new namespace object for each file that imports it (`import * as fs`), some
 * 80 copies of fs, path and os at every start. The lazy ones are taken for `require()` too.
 */
const sharedBuiltins = {
  name: 'shared-builtins',
  setup(build) {
    const builtins = new Set(Module.builtinModules);
    build.onResolve({ filter: /^[a-z_/]+$|^node:/ }, (args) => {
      const name = args.path.replace(/^node:/, '');
      const lazy = LAZY_BUILTINS.has(name) && args.kind === 'require-call';
      if (!builtins.has(name) || (args.kind !== 'import-statement' && !lazy)) return undefined;
      if (args.namespace === 'builtin') return { path: `node:${name}`, external: true };
      return { path: name, namespace: 'builtin' };
    });
    build.onLoad({ filter: /.*/, namespace: 'builtin' }, (args) => ({
      contents: LAZY_BUILTINS.has(args.path)
        ? lazyBuiltin(args.path)
        : `export * from "node:${args.path}";\nexport default require("node:${args.path}");\n`,
      loader: 'js',
    }));
  },
};

/**
 * V8's code cache of the bundle, as bin/load-bundle.cjs compiles it, made after its top level ran
 * (so it holds what running the top level compiled too), in a Node of its own with the bins' flags.
 * A cache of another bundle must never be left beside this one: it goes first.
 */
function writeCodeCache() {
  const script = new vm.Script(Module.wrap(fs.readFileSync(BUNDLE, 'latin1')), { filename: BUNDLE });
  const bundle = new Module(BUNDLE, module);
  bundle.filename = BUNDLE;
  bundle.paths = Module._nodeModulePaths(OUT);
  script.runInThisContext().call(bundle.exports, bundle.exports, Module.createRequire(BUNDLE), bundle, BUNDLE, OUT);
  fs.writeFileSync(`${BUNDLE}.cache`, script.createCachedData());
}

/**
 * esbuild escapes what is not ASCII in code (`charset: 'ascii'`) but not in comments: escaped there
 * too (harmless in a comment, as `\u{...}` anywhere esbuild leaves it), the bundle is ASCII, which
 * bin/load-bundle.cjs reads as Latin-1, a plain copy, instead of decoding UTF-8 (10-20 ms).
 */
function asciiOnly() {
  const text = fs.readFileSync(BUNDLE, 'utf8');
  fs.writeFileSync(
    BUNDLE,
    text.replace(/[^\x00-\x7f]/gu, (c) => `\\u{${c.codePointAt(0).toString(16)}}`),
  );
}

function build() {
  fs.rmSync(`${BUNDLE}.cache`, { force: true });
  return esbuild.build({
    // The whole CLI, and the quick path the bins try first (listings answered by devgated): a file of
    // its own, so that answering from devgated loads neither the CLI nor Node's module resolution.
    entryPoints: { cli: path.join(CLI, 'src/bundled.ts'), quick: path.join(CLI, 'src/quick.ts') },
    outdir: OUT,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    tsconfig: path.join(CLI, 'tsconfig.lib.json'),
    // Our packages' sources; jsonc-parser's `main` is a UMD build, its `module` plain ESM.
    conditions: ['@devgate/source'],
    mainFields: ['module', 'main'],
    // A native addon: loaded from node_modules, where its binary is, and only when a store is opened.
    external: ['better-sqlite3'],
    banner: { js: 'const __bundle_dirname = __dirname;' },
    plugins: [ownDirname, rxjsEsm, sharedBuiltins],
    // `require.resolve` of our packages stays a run-time lookup (the module loader's peers, the agent's bin).
    logOverride: { 'require-resolve-not-external': 'silent' },
    logLevel: 'warning',
    legalComments: 'none',
    charset: 'ascii',
    // Half the bytes to read, copy into a string and page in at every start (each fresh page costs
    // about 18 us on this machine kind): about 540 fewer page faults, 10 ms. Names are not kept
    // (esbuild's keepNames costs 280 faults and 30 ms of CPU; nothing reads a function's name);
    // `NODE_OPTIONS=--enable-source-maps` maps a stack trace back through cli.js.map.
    minify: true,
    sourcemap: 'linked',
    sourcesContent: false,
  });
}

if (process.argv[2] === '--code-cache') writeCodeCache();
else
  build()
    .then(asciiOnly)
    .then(() =>
      execFileSync(process.execPath, [...cliBinLine().flags, __filename, '--code-cache'], { stdio: 'inherit' }),
    )
    .catch((error) => {
      // esbuild prints its own errors; anything else would go unsaid.
      if (!error.errors) console.error(`bundle.cjs: ${error.message}`);
      process.exit(1);
    });
