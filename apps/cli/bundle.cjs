// The CLI's bundle (ADR 0014): dist/bundled.js, as tsc built it, and everything it requires (our
// packages' dist files and their npm dependencies) in one file, dist/bundle/cli.js, which
// bin/*.cjs load. Run by the build target after tsc (package.json, nx.targets.build).
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const esbuild = require('esbuild');

const CLI = __dirname;
const OUT = path.join(CLI, 'dist/bundle');

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
    build.onLoad({ filter: /\.js$/ }, (args) => {
      const contents = fs.readFileSync(args.path, 'utf8');
      if (args.path.includes(`${path.sep}node_modules${path.sep}`) || !/\b__(dirname|filename)\b/.test(contents)) {
        return undefined;
      }
      const { root, name } = packageOf(args.path);
      const base =
        root === CLI
          ? `require("node:path").join(__bundle_dirname, ${JSON.stringify(path.relative(OUT, root))})`
          : `require("node:path").dirname(require.resolve(${JSON.stringify(`${name}/package.json`)}))`;
      const dir = path.relative(root, path.dirname(args.path));
      const file = path.relative(root, args.path);
      return {
        contents:
          `var __dirname = require("node:path").join(${base}, ${JSON.stringify(dir)});\n` +
          `var __filename = require("node:path").join(${base}, ${JSON.stringify(file)});\n` +
          contents,
        loader: 'js',
      };
    });
  },
};

esbuild
  .build({
    entryPoints: { cli: path.join(CLI, 'dist/bundled.js') },
    outdir: OUT,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    // jsonc-parser's `main` is a UMD build that esbuild cannot follow; its `module` is plain ESM.
    mainFields: ['module', 'main'],
    // A native addon: loaded from node_modules, where its binary is.
    external: ['better-sqlite3'],
    banner: { js: 'const __bundle_dirname = __dirname;' },
    plugins: [ownDirname],
    // `require.resolve` of our packages stays a run-time lookup (the module loader's peers, the agent's bin).
    logOverride: { 'require-resolve-not-external': 'silent' },
    logLevel: 'warning',
    legalComments: 'none',
  })
  .catch(() => process.exit(1));
