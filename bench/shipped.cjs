// How a bin is run as shipped: its `#!/usr/bin/env -S [VAR=value ...] node FLAGS` line, which the
// systemd unit, `npx` and a shell on PATH all go through. The benchmarks run the bins the same way:
// the CLI's code cache is made under its bins' flags and V8 rejects it under any others (ADR 0014).
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');

/** `bin` (relative to the repository): the environment, the Node flags and the line they came from. */
function shipped(bin) {
  const file = path.join(ROOT, bin);
  const shebang = fs.readFileSync(file, 'utf8').split('\n', 1)[0];
  const words = /^#!\/usr\/bin\/env -S (.+)$/.exec(shebang)?.[1].trim().split(/\s+/) ?? [];
  const node = words.indexOf('node');
  const env = Object.fromEntries(
    words.slice(0, Math.max(node, 0)).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)]),
  );
  const flags = words.slice(node + 1);
  /** Node's arguments to run the bin with `args` as its line does, and `extraFlags` after its own. */
  const argv = (args = [], extraFlags = []) => [...flags, ...extraFlags, file, ...args];
  return { env, flags, argv, line: words.join(' ') };
}

module.exports = { shipped };
