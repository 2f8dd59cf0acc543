// Lets a plain `node` child process (the crash test's writer) load the store's TypeScript sources
// exactly as jest does: swc transpiles `.ts` on require, NodeNext `./x.js` specifiers resolve to
// `./x.ts`, and `@devgate/core` resolves to its sources (run node with --conditions=@devgate/source).
// Test-only: devgated itself runs the tsc build.
'use strict';
const fs = require('node:fs');
const Module = require('node:module');
const { transformSync } = require('@swc/core');

require('reflect-metadata');

const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, parent, ...rest) {
  try {
    return resolve.call(this, request, parent, ...rest);
  } catch (error) {
    if (!request.startsWith('.') || !request.endsWith('.js')) throw error;
    return resolve.call(this, request.slice(0, -3) + '.ts', parent, ...rest);
  }
};

const swcOptions = {
  jsc: {
    parser: { syntax: 'typescript', decorators: true },
    transform: { legacyDecorator: true, decoratorMetadata: true },
    target: 'es2022',
  },
  module: { type: 'commonjs' },
};

require.extensions['.ts'] = function (module, filename) {
  const { code } = transformSync(fs.readFileSync(filename, 'utf8'), { ...swcOptions, filename });
  module._compile(code, filename);
};
