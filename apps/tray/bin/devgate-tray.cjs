#!/usr/bin/env node
'use strict';
require('../dist/main.js')
  .runAsMain()
  .catch((error) => {
    process.stderr.write(`devgate-tray: error: ${error.message}\n`);
    process.exitCode = 1;
  });
