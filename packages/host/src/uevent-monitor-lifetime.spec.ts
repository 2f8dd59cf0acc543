import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';

// A process that follows uevents (as devgated does) and is killed with SIGKILL takes its udevadm
// monitor with it. Before, the monitor ran on until its next write into the dead pipe.
jest.setTimeout(20_000);

const FOLLOWER = `
require('reflect-metadata');
const { UeventMonitor } = require('@devgate/host');
const monitor = new UeventMonitor(() => {}, () => {}, () => process.stdout.write('listening\\n'));
monitor.start();
setInterval(() => {}, 60_000);
`;

let follower: ChildProcess | undefined;
afterEach(() => follower?.kill('SIGKILL'));

function childrenOf(pid: number): number[] {
  const children: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = statOf(Number(entry));
    if (stat?.ppid === pid) children.push(Number(entry));
  }
  return children;
}

/** State and parent of a process; undefined once it is gone. */
function statOf(pid: number): { state: string; ppid: number } | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state, ppid: Number(ppid) };
  } catch {
    return undefined;
  }
}

it('ends the udevadm monitor when the process that started it is killed', async () => {
  const child = spawn(process.execPath, ['-e', FOLLOWER], { cwd: __dirname, stdio: ['ignore', 'pipe', 'inherit'] });
  follower = child;
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => chunk.toString().includes('listening') && resolve());
    child.on('exit', (code) => reject(new Error(`the follower exited (${code}) before udevadm listened`)));
  });
  const [monitor] = childrenOf(child.pid!);
  expect(statOf(monitor)).toBeDefined();

  child.kill('SIGKILL');
  // Gone, or a zombie waiting for whoever reaps orphans here: either way it no longer runs.
  const deadline = Date.now() + 5000;
  while (!['Z', undefined].includes(statOf(monitor)?.state)) {
    if (Date.now() > deadline) throw new Error(`udevadm (${monitor}) still runs after its parent was killed`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
});
