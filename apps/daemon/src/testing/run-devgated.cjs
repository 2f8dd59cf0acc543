// Runs devgated from its TypeScript sources in a plain `node` child process, for tests that need a
// real process to SIGKILL (see daemon-harness.ts). Started as
//   node --conditions=@devgate/source run-devgated.cjs --config FILE
// Test-only: the installed devgated runs the tsc build (bin/devgated.cjs).
'use strict';
require('@devgate/service/testing/register-ts.cjs');
const { main } = require('../main.ts');

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`run-devgated: ${error && error.stack ? error.stack : String(error)}\n`);
    process.exitCode = 1;
  },
);
