// How a bin is run as shipped: its `#!/usr/bin/env -S [VAR=value ...] node FLAGS` line. The
// benchmarks run the bins the same way: the CLI's code cache is made under its bins' flags and V8
// rejects it under any others (ADR 0014).
'use strict';
const path = require('node:path');
const { binLine } = require('../apps/cli/bin-line.cjs');

const ROOT = path.join(__dirname, '..');

/** `bin` (relative to the repository): the environment, the Node flags and the line they came from. */
function shipped(bin) {
  const file = path.join(ROOT, bin);
  const { env, flags, words } = binLine(file);
  /** Node's arguments to run the bin with `args` as its line does, and `extraFlags` after its own. */
  const argv = (args = [], extraFlags = []) => [...flags, ...extraFlags, file, ...args];
  return { env, flags, argv, line: words.join(' ') };
}

module.exports = { shipped };
