/**
 * `devgated --check-config FILE`: checks a configuration and exits. Run as its own process, so
 * that a read that blocks (a FIFO at FILE waits for a writer) fails by timeout instead of hanging jest.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { childOutput } from '@devgate/testkit';
import { DAEMON_SRC, cleanupHarness, makeTempDir } from './testing/daemon-harness.js';

const RUNNER = path.join(DAEMON_SRC, 'testing', 'run-devgated.cjs');
const children = new Set<ChildProcess>();
afterEach(() => {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
});
afterAll(() => cleanupHarness());

/** Its exit code, stdout and stderr. */
const checkConfig = (file: string) => {
  const child = spawn(process.execPath, ['--conditions=@devgate/source', RUNNER, '--check-config', file], {
    cwd: DAEMON_SRC,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  return childOutput(child);
};

it('checks a file, and refuses a FIFO at once as not a regular file rather than wait for a writer', async () => {
  const dir = makeTempDir('devgated-check-config-');
  const good = path.join(dir, 'devgated.json');
  fs.writeFileSync(good, '{ "askTimeoutSeconds": 30 }');
  expect(await checkConfig(good)).toEqual({ code: 0, out: `${good}: ok\n`, err: '' });
  const fifo = path.join(dir, 'fifo.json');
  execFileSync('mkfifo', ['-m', '0644', fifo]);
  expect(await checkConfig(fifo)).toEqual({
    code: 1,
    out: '',
    err: `devgated: error: ${fifo}: not a regular file\n`,
  });
}, 10_000);
