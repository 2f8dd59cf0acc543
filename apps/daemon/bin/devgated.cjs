#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=1 --v8-pool-size=2 --no-opt
'use strict';
require('../dist/main.js')
  .main(process.argv.slice(2))
  .then((code) => (process.exitCode = code));
