'use strict';
// Loads dist/bundle/cli.js as require() would, with the V8 code cache the build made for it
// (bundle.cjs, ADR 0014): most of the bundle's compiling is then reading the cache. V8 checks that the
// cache fits this Node, its flags and the source, and compiles anew otherwise; without a cache this is
// require().
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const Module = require('node:module');

const file = path.join(__dirname, '../dist/bundle/cli.js');

module.exports = function loadBundle() {
  let cachedData;
  try {
    cachedData = fs.readFileSync(`${file}.cache`);
  } catch {
    return require(file);
  }
  // The build made the bundle ASCII: read as Latin-1 it is the same text, without decoding UTF-8.
  const script = new vm.Script(Module.wrap(fs.readFileSync(file, 'latin1')), { filename: file, cachedData });
  const bundle = new Module(file, module);
  bundle.filename = file;
  bundle.paths = Module._nodeModulePaths(path.dirname(file));
  require.cache[file] = bundle;
  const dir = path.dirname(file);
  script.runInThisContext().call(bundle.exports, bundle.exports, Module.createRequire(file), bundle, file, dir);
  bundle.loaded = true;
  return bundle.exports;
};
