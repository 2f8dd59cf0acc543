// Shared jest settings: tests import sibling packages' sources through the @devgate/source
// export condition, so no build is needed before `jest`.
const path = require('node:path');
module.exports = {
  testEnvironment: 'node',
  testEnvironmentOptions: { customExportConditions: ['@devgate/source', 'node', 'require', 'default'] },
  setupFiles: ['reflect-metadata'],
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  transform: {
    '^.+\\.ts$': [
      '@swc/jest',
      {
        jsc: {
          parser: { syntax: 'typescript', decorators: true },
          transform: { legacyDecorator: true, decoratorMetadata: true },
          target: 'es2022',
        },
        module: { type: 'commonjs' },
      },
    ],
  },
  testMatch: ['<rootDir>/src/**/*.spec.ts'],
  // A handle a test forgot must not hang the whole suite (CI has a deadline); tests clean up all the same.
  forceExit: true,
  cacheDirectory: path.join(__dirname, '.jest-cache'),
};
