#!/usr/bin/env -S node --max-semi-space-size=1
'use strict';
require('../dist/main.js')
  .main(process.argv.slice(2))
  .then((code) => (process.exitCode = code));
