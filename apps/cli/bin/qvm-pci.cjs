#!/usr/bin/env -S node --v8-pool-size=2
'use strict';
// The quick path has devgated answer common listings, attach and detach without loading the whole
// CLI; the whole CLI is one bundled file (ADR 0014).
require('../dist/bundle/quick.js')
  .quick('qvm-pci', process.argv.slice(2), () => require('./load-bundle.cjs')())
  .then((handled) => handled || require('./load-bundle.cjs')().run('qvm-pci'))
  .catch((error) => {
    process.stderr.write(`qvm-pci: error: ${error.message}\n`);
    process.exitCode = 1;
  });
