import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';

// The bins run Node with flags of their own (their `#!/usr/bin/env -S node FLAGS` line), and V8 takes
// the bundle's code cache only under the flags it was made with (ADR 0014, fourth round). These check
// the build made the cache under the bins' flags, by asking V8 in a Node started as the bins start it.
jest.setTimeout(30_000);

const CLI = path.join(__dirname, '..');
const BUNDLE = path.join(CLI, 'dist/bundle/cli.js');
// The same reader of the bins' line as the build's (a CommonJS build script, without types).
const { CLI_BINS, cliBinLine } = createRequire(__filename)('../bin-line.cjs') as {
  CLI_BINS: string[];
  cliBinLine(): { flags: string[] };
};

/** Whether V8, in a Node started with `flags`, rejects the bundle's code cache. */
function cacheRejected(flags: string[]): boolean {
  const probe = `
    const fs = require('node:fs'), vm = require('node:vm'), Module = require('node:module');
    const file = ${JSON.stringify(BUNDLE)};
    const script = new vm.Script(Module.wrap(fs.readFileSync(file, 'latin1')),
      { filename: file, cachedData: fs.readFileSync(file + '.cache') });
    process.stdout.write(String(script.cachedDataRejected));`;
  return execFileSync(process.execPath, [...flags, '-e', probe], { encoding: 'utf8' }) === 'true';
}

it('gives every bin the same Node line', () => {
  const lines = CLI_BINS.map((bin) => fs.readFileSync(bin, 'utf8').split('\n', 1)[0]);
  expect(new Set(lines).size).toBe(1);
  expect(lines[0]).toMatch(/^#!\/usr\/bin\/env -S node( --[\w-]+(=\S+)?)+$/);
});

it('makes the code cache V8 takes under the flags the bins run with', () => {
  expect(cacheRejected(cliBinLine().flags)).toBe(false);
  // Under a flag that changes V8's flag hash the same cache is refused: the check above can fail.
  expect(cacheRejected([...cliBinLine().flags, '--max-lazy'])).toBe(true);
});

it('runs a bin through its own line, as a shell on PATH does', () => {
  const version = JSON.parse(fs.readFileSync(path.join(CLI, 'package.json'), 'utf8')).version as string;
  expect(execFileSync(CLI_BINS[0], ['--version'], { encoding: 'utf8' }).trim()).toBe(version);
});
