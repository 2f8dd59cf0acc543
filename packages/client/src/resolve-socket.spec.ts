import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { resolveSocket, socketListening } from './index';

// Which devgated a client talks to, with real sockets: a listening one, a stale file a killed daemon
// left, none. The tests run as root, so the user is given (`uid`), and the system socket is a path
// in a temp directory instead of /run/devgate/devgate.sock.
let dir: string;
let runtime: string;
let own: string;
let system: string;
const servers: net.Server[] = [];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-resolve-'));
  runtime = path.join(dir, 'user-runtime');
  own = path.join(runtime, 'devgate', 'devgate.sock');
  system = path.join(dir, 'run', 'devgate', 'devgate.sock');
  fs.mkdirSync(path.dirname(own), { recursive: true });
  fs.mkdirSync(path.dirname(system), { recursive: true });
});

afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))));
  fs.rmSync(dir, { recursive: true, force: true });
});

function listen(file: string): Promise<void> {
  const server = net.createServer((socket) => socket.end());
  servers.push(server);
  return new Promise((resolve) => server.listen(file, resolve));
}

/** A socket file whose daemon was SIGKILLed: the file stays, nobody listens. */
function staleSocket(file: string): Promise<void> {
  const child = spawn(
    process.execPath,
    ['-e', `require('net').createServer().listen(process.argv[1], () => process.stdout.write('up'))`, file],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.stdout!.once('data', () => child.kill('SIGKILL'));
    child.on('exit', () => (fs.existsSync(file) ? resolve() : reject(new Error('no socket file left'))));
  });
}

const user = (env: NodeJS.ProcessEnv = {}) =>
  resolveSocket(undefined, { XDG_RUNTIME_DIR: runtime, ...env }, { uid: 1000, systemSocket: system });

it('takes the system daemon’s socket when the user runs none', async () => {
  await listen(system);
  expect(user()).toBe(system);
});

it('takes the user’s own daemon when one listens there, before the system’s', async () => {
  await listen(system);
  await listen(own);
  expect(user()).toBe(own);
});

it('skips a socket file a killed daemon left in the user’s runtime dir', async () => {
  await staleSocket(own);
  expect(fs.statSync(own).isSocket()).toBe(true);
  expect(socketListening(own)).toBe(false);
  await listen(system);
  expect(user()).toBe(system);
});

it('$DEVGATE_SOCKET and an explicit path come first; root uses the system socket', async () => {
  await listen(system);
  await listen(own);
  expect(user({ DEVGATE_SOCKET: '/somewhere/else.sock' })).toBe('/somewhere/else.sock');
  expect(resolveSocket('/explicit.sock', { DEVGATE_SOCKET: '/else.sock' })).toBe('/explicit.sock');
  expect(resolveSocket(undefined, { XDG_RUNTIME_DIR: runtime }, { uid: 0, systemSocket: system })).toBe(system);
});

it('names the user’s own socket when no daemon runs at all', () => {
  expect(user()).toBe(own);
});

it('takes an empty or relative XDG_RUNTIME_DIR for none (the XDG spec), as devgated does: os.tmpdir()', () => {
  const fallback = path.join(os.tmpdir(), 'devgate', 'devgate.sock');
  for (const runtime of ['', 'run/user/1000', './run']) expect(user({ XDG_RUNTIME_DIR: runtime })).toBe(fallback);
});

it('sees a listening socket through a symlinked directory', async () => {
  await listen(own);
  const link = path.join(dir, 'link');
  fs.symlinkSync(path.dirname(own), link);
  expect(socketListening(path.join(link, 'devgate.sock'))).toBe(true);
});
