/**
 * `devgate config check FILE`: checks a configuration its user writes (no trust check: that is
 * devgated's, when it loads the file). Run as its own process, so that a read that blocks (a FIFO at
 * FILE waits for a writer) fails by timeout instead of hanging jest.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { childOutput } from '@devgate/testkit';

const children = new Set<ChildProcess>();
let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-config-check-'))));
afterEach(() => {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** `devgate config check FILE` from the sources: its exit code, stdout and stderr. */
const configCheck = (file: string) => {
  const script = `require(${JSON.stringify(path.join(__dirname, 'main.ts'))})
    .run('devgate', ['config', 'check', process.argv[1]]).then((code) => (process.exitCode = code));`;
  const child = spawn(
    process.execPath,
    ['--conditions=@devgate/source', '-r', '@devgate/service/testing/register-ts.cjs', '-e', script, file],
    { cwd: __dirname, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.add(child);
  return childOutput(child);
};

it('checks a file its user may write, locating its problems, and refuses a FIFO at once as not a regular file', async () => {
  const good = path.join(dir, 'devgated.json');
  fs.writeFileSync(good, '{ "askTimeoutSeconds": 30 }', { mode: 0o666 });
  expect(await configCheck(good)).toEqual({ code: 0, out: `${good}: ok\n`, err: '' });
  const bad = path.join(dir, 'bad.json');
  fs.writeFileSync(bad, '{\n  "socket": 5\n}\n');
  expect(await configCheck(bad)).toEqual({ code: 1, out: '', err: `${bad}:2:13: socket must be a non-empty string\n` });
  const fifo = path.join(dir, 'fifo.json');
  execFileSync('mkfifo', ['-m', '0644', fifo]);
  expect(await configCheck(fifo)).toEqual({ code: 1, out: '', err: `devgate: error: ${fifo}: not a regular file\n` });
}, 15_000);
