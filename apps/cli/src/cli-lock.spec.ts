import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type DevgateError } from '@devgate/core';
import { withCliLock } from './cli-lock';

// The CLI lock between real processes: each contender is a separate `node` running cli-lock.ts
// (transpiled on the fly, so these tests need no build of the CLI).
jest.setTimeout(60_000);

const LOCK_SOURCE = path.join(__dirname, 'cli-lock.ts');
const WORKSPACE = path.resolve(__dirname, '..', '..', '..');

/**
 * argv: cli-lock.ts, the lock file, a mode, a timeout in ms.
 *  hold   take the lock, print "locked PID", keep it until stdin ends, print "released"
 *  try    take the lock within the timeout: print "locked", or the error's code
 *  peek   as try, for a command that changes nothing (readOnly)
 *  count  20 times: take the lock, append "+PID", yield, append "-PID" to the file in argv[5]
 */
const CONTENDER = `
require('reflect-metadata'); // @devgate/core needs it, as the CLI's own entry does
const fs = require('node:fs');
const Module = require('node:module');
const path = require('node:path');
const { transformSync } = require('@swc/core');
const [source, lockPath, mode, timeout, log] = process.argv.slice(1);
const compiled = transformSync(fs.readFileSync(source, 'utf8'), {
  filename: source,
  jsc: { parser: { syntax: 'typescript' }, target: 'es2022' },
  module: { type: 'commonjs' },
}).code;
const lockModule = new Module(source, module);
lockModule.filename = source;
lockModule.paths = Module._nodeModulePaths(path.dirname(source));
lockModule._compile(compiled, source);
const { withCliLock } = lockModule.exports;
const say = (line) => process.stdout.write(line + '\\n');
(async () => {
  if (mode === 'hold') {
    await withCliLock(lockPath, async () => {
      say('locked ' + process.pid);
      await new Promise((resolve) => process.stdin.on('end', resolve).resume());
    }, Number(timeout));
    say('released');
  } else if (mode === 'try' || mode === 'peek') {
    await withCliLock(lockPath, async () => say('locked'), Number(timeout), { readOnly: mode === 'peek' }).catch((error) =>
      say(error.code ?? String(error)),
    );
  } else {
    for (let i = 0; i < 20; i++) {
      await withCliLock(lockPath, async () => {
        fs.appendFileSync(log, '+' + process.pid + '\\n');
        await new Promise((resolve) => setImmediate(resolve));
        fs.appendFileSync(log, '-' + process.pid + '\\n');
      }, Number(timeout));
    }
    say('done');
  }
})();
`;

let dir: string;
let lockPath: string;
const children = new Set<ChildProcess>();

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-cli-lock-'));
  lockPath = path.join(dir, 'state', 'domains.json.lock');
});

afterEach(async () => {
  for (const child of children) {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // its group is gone
    }
  }
  children.clear();
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Contender {
  readonly child: ChildProcess;
  /** Resolves with the first stdout line matching. */
  line(pattern: RegExp): Promise<string>;
  readonly exited: Promise<number | null>;
}

/** A contender in its own process group; `wrap` runs it under `sh -c` (see the zombie test). */
function contender(mode: string, timeoutMs: number, options: { log?: string; wrap?: string } = {}): Contender {
  const args = ['-e', CONTENDER, LOCK_SOURCE, lockPath, mode, String(timeoutMs), options.log ?? ''];
  const child = options.wrap
    ? spawn('sh', ['-c', options.wrap, process.execPath, ...args], { cwd: WORKSPACE, detached: true })
    : spawn(process.execPath, args, { cwd: WORKSPACE, detached: true });
  children.add(child);
  let out = '';
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  const check = () => {
    for (const waiter of [...waiters]) {
      const found = out.split('\n').find((l) => waiter.pattern.test(l));
      if (found !== undefined) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(found);
      }
    }
  };
  let err = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    check();
  });
  child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    exited,
    line: (pattern) =>
      new Promise((resolve, reject) => {
        waiters.push({ pattern, resolve });
        check();
        // A contender that ends without the line fails the test with what it said.
        void exited.then(() =>
          setImmediate(
            () => waiters.some((w) => w.pattern === pattern) && reject(new Error(`no ${pattern}: ${out}${err}`)),
          ),
        );
      }),
  };
}

it('two processes contend: the second waits its timeout out and is told DG_BUSY; after a release it gets the lock', async () => {
  const holder = contender('hold', 5_000);
  await holder.line(/^locked \d+$/);

  const second = contender('try', 300);
  expect(await second.line(/^(locked|DG_\w+)$/)).toBe('DG_BUSY');

  // A waiter with a long timeout gets the lock as soon as the holder lets go.
  const waiter = contender('try', 30_000);
  holder.child.stdin!.end();
  await holder.line(/^released$/);
  expect(await waiter.line(/^(locked|DG_\w+)$/)).toBe('locked');
});

it('a SIGKILLed holder releases the lock at once, even while it is a zombie nobody has reaped', async () => {
  // The holder's parent becomes `sleep`, which never waits for its children: once killed, the
  // holder stays a zombie (its pid still exists), as under a parent that is busy or stopped.
  const shell = contender('hold', 5_000, { wrap: '"$0" "$@" & exec sleep 600' });
  const pid = Number((await shell.line(/^locked \d+$/)).split(' ')[1]);
  process.kill(pid, 'SIGKILL');
  // The holder is dead once the kernel lists it as a zombie (state Z).
  for (let i = 0; ; i++) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) break;
    if (i > 1000) throw new Error(`process ${pid} did not die: ${stat}`);
    await new Promise((resolve) => setImmediate(resolve));
  }

  // No waiting at all: a timeout of 0 fails unless the lock is free right now.
  const next = contender('try', 0);
  expect(await next.line(/^(locked|DG_\w+)$/)).toBe('locked');
});

it('keeps three processes taking turns: no two are ever inside at once', async () => {
  const log = path.join(dir, 'turns.log');
  const all = [0, 1, 2].map(() => contender('count', 30_000, { log }));
  await Promise.all(all.map((c) => c.line(/^done$/)));
  const lines = fs.readFileSync(log, 'utf8').trim().split('\n');
  expect(lines).toHaveLength(3 * 20 * 2);
  for (let i = 0; i < lines.length; i += 2) {
    expect([lines[i][0], lines[i + 1]]).toEqual(['+', `-${lines[i].slice(1)}`]);
  }
});

describe('what the lock leaves on disk', () => {
  it('a command that changes nothing runs without a lock file and creates none, nor its directory', async () => {
    await expect(withCliLock(lockPath, async () => 'listed', 0, { readOnly: true })).resolves.toBe('listed');
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('a command that changes nothing still takes turns with a lock file that is there', async () => {
    const holder = contender('hold', 5_000);
    await holder.line(/^locked \d+$/);
    const reader = contender('peek', 300);
    expect(await reader.line(/^(locked|DG_\w+)$/)).toBe('DG_BUSY');
    holder.child.stdin!.end();
    await holder.line(/^released$/);
    expect(await contender('peek', 0).line(/^(locked|DG_\w+)$/)).toBe('locked');
  });

  it('never removes a directory it did not make at the lock path', async () => {
    fs.mkdirSync(lockPath, { recursive: true });
    fs.writeFileSync(path.join(lockPath, 'data'), "not devgate's");
    const refused = (await withCliLock(lockPath, async () => 'attached', 0).catch((e: unknown) => e)) as DevgateError;
    expect(refused).toMatchObject({ code: 'DG_LOCK_FAILED', message: expect.stringContaining('did not make') });
    expect(refused.hint).toBeUndefined(); // util-linux is there: installing it would not help
    expect(fs.readFileSync(path.join(lockPath, 'data'), 'utf8')).toBe("not devgate's");
  });

  it("replaces an older devgate's lock directory (its pid file alone) once its owner is gone", async () => {
    // A pid that is no process: a child that has been reaped.
    const gone = spawn(process.execPath, ['-e', '']);
    await new Promise((resolve) => gone.once('close', resolve));
    fs.mkdirSync(lockPath, { recursive: true });
    fs.writeFileSync(path.join(lockPath, 'pid'), String(gone.pid));
    await expect(withCliLock(lockPath, async () => 'attached', 0)).resolves.toBe('attached');
    expect(fs.statSync(lockPath).isFile()).toBe(true);

    // One whose owner runs is held.
    fs.rmSync(lockPath);
    fs.mkdirSync(lockPath);
    fs.writeFileSync(path.join(lockPath, 'pid'), String(process.pid));
    await expect(withCliLock(lockPath, async () => 'attached', 0)).rejects.toMatchObject({ code: 'DG_BUSY' });
    expect(fs.readFileSync(path.join(lockPath, 'pid'), 'utf8')).toBe(String(process.pid));
  });
});
