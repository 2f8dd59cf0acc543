// How a bin starts Node: its `#!/usr/bin/env -S [VAR=value ...] node FLAGS` line, which a shell on
// PATH, npx and a systemd unit all go through. Read by the CLI's build (V8 takes the bundle's code
// cache only under the flags it was made with: ADR 0014, fourth round), its spec and the benchmarks.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

/** The CLI's bins, which all carry one line. */
const CLI_BINS = ['devgate', 'qvm-device', 'qvm-block', 'qvm-usb', 'qvm-pci'].map((name) =>
  path.join(__dirname, 'bin', `${name}.cjs`),
);

/** A bin's line: the environment it sets, Node's flags, and the line's words. */
function binLine(file) {
  const line = fs.readFileSync(file, 'utf8').split('\n', 1)[0];
  const words = /^#!\/usr\/bin\/env -S (.+)$/.exec(line)?.[1].trim().split(/\s+/) ?? [];
  const node = words.indexOf('node');
  if (node < 0) throw new Error(`${file}: its first line is not '#!/usr/bin/env -S [VAR=value ...] node FLAGS'`);
  const env = Object.fromEntries(
    words.slice(0, node).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)]),
  );
  return { env, flags: words.slice(node + 1), words };
}

/** The CLI bins' one line; bins that differ are refused. */
function cliBinLine() {
  const lines = new Set(CLI_BINS.map((bin) => fs.readFileSync(bin, 'utf8').split('\n', 1)[0]));
  if (lines.size !== 1)
    throw new Error(`apps/cli/bin: every bin must carry the same first line: ${[...lines].join(' | ')}`);
  return binLine(CLI_BINS[0]);
}

module.exports = { CLI_BINS, binLine, cliBinLine };
