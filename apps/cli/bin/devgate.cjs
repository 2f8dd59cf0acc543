#!/usr/bin/env node
'use strict';
// The quick path answers common listings from devgated without loading the whole CLI.
require('../dist/quick.js')
  .quick('devgate', process.argv.slice(2))
  .then((handled) => handled || require('../dist/main.js').runAsMain('devgate'))
  .catch((error) => {
    process.stderr.write(`devgate: error: ${error.message}\n`);
    process.exitCode = 1;
  });
