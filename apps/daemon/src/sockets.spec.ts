/**
 * devgated's two socket files, watched in real processes:
 *  - the `.rw` socket never exists with wider permissions than 0600, not even between bind(2) and
 *    the chmod/ACLs that follow: under `strace`, the umask in force when bind(2) creates each socket
 *    file is read off the syscalls themselves, with devgated started under `umask 000`;
 *  - a socket systemd handed over (socket activation: LISTEN_FDS, LISTEN_PID, fd 3) is systemd's:
 *    devgated started by `systemd-socket-activate`, as systemd starts it, leaves that file in place
 *    when it stops and removes only the `.rw` socket it made itself.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rwSocketPath } from './devgated.js';
import {
  DAEMON_SRC,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  request,
  startInProcess,
  writeConfigFile,
} from './testing/daemon-harness.js';

jest.setTimeout(60_000);

const RUNNER = path.join(DAEMON_SRC, 'testing', 'run-devgated.cjs');
const DEVGATED = [process.execPath, '--conditions=@devgate/source', RUNNER];

interface Started {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output(): string;
}

const started = new Set<Started>();

/** A command in its own process group, so everything it starts can be ended together. */
function startGroup(command: string, args: readonly string[]): Started {
  const child = spawn(command, args, {
    cwd: DAEMON_SRC,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DEVGATE_LOG_LEVEL: 'warn', DEVGATE_SOCKET: undefined },
  });
  let output = '';
  const keep = (chunk: Buffer) => (output = (output + chunk.toString()).slice(-16_384));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const entry: Started = { child, exited, output: () => output };
  started.add(entry);
  void exited.then(() => started.delete(entry));
  return entry;
}

function signalGroup(entry: Started, signal: NodeJS.Signals): void {
  try {
    process.kill(-entry.child.pid!, signal);
  } catch {
    // the group is gone
  }
}

afterAll(async () => {
  for (const entry of [...started]) {
    signalGroup(entry, 'SIGKILL');
    await entry.exited;
  }
  await cleanupHarness();
});

/** Until GET /v1/health answers 200 on `socket` (the first request may be what starts devgated). */
async function waitHealthy(socket: string, entry: Started, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let running = true;
  void entry.exited.then(() => (running = false));
  for (;;) {
    const answer = await request(socket, 'GET', '/v1/health', undefined, { timeoutMs: 20_000 }).catch(() => undefined);
    if (answer?.status === 200) return;
    if (!running || Date.now() > deadline) throw new Error(`no answer on ${socket}:\n${entry.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The umask in force at each bind(2) of a Unix socket path, from `strace -e trace=umask,bind`. */
function umaskAtBind(trace: string, initialUmask: number): Map<string, number> {
  const result = new Map<string, number>();
  let umask = initialUmask;
  for (const line of trace.split('\n')) {
    const set = /\bumask\((0[0-7]*)\)/.exec(line);
    if (set) umask = parseInt(set[1], 8);
    const bind = /\bbind\(\d+, \{sa_family=AF_UNIX, sun_path="([^"]+)"\}.*= 0$/.exec(line);
    if (bind) result.set(bind[1], umask);
  }
  return result;
}

it('creates devgate.sock.rw 0600 and devgate.sock 0660 at bind time, under umask 000', async () => {
  const dir = makeTempDir('devgated-sockets-');
  const config = harnessConfig(dir);
  const configFile = writeConfigFile(config, path.join(dir, 'devgated.json'));
  const trace = path.join(dir, 'strace.txt');
  // sh sets the most permissive umask and becomes devgated (exec), all of it traced.
  const strace = startGroup('strace', [
    ...['-f', '-qq', '--seccomp-bpf', '-e', 'trace=umask,bind', '-o', trace],
    ...['sh', '-c', 'umask 000 && exec "$@"', 'sh', ...DEVGATED, '--config', configFile],
  ]);
  await waitHealthy(config.socket, strace);
  await waitHealthy(rwSocketPath(config.socket), strace);
  signalGroup(strace, 'SIGTERM');
  await strace.exited;

  const binds = umaskAtBind(fs.readFileSync(trace, 'utf8'), process.umask());
  const modeAtBind = (file: string) => {
    expect(binds.has(file)).toBe(true);
    return 0o777 & ~binds.get(file)!;
  };
  // Nothing but the owner (root) can connect to .rw from the instant it exists; the read socket
  // never admits others. The group and the ACL entries come after.
  expect(modeAtBind(rwSocketPath(config.socket)).toString(8)).toBe('600');
  expect(modeAtBind(config.socket).toString(8)).toBe('660');
});

it('started by socket activation, leaves systemd’s socket in place when it stops, and removes its .rw socket', async () => {
  const dir = makeTempDir('devgated-activated-');
  const config = harnessConfig(dir);
  const configFile = writeConfigFile(config, path.join(dir, 'devgated.json'));
  fs.mkdirSync(path.dirname(config.socket), { recursive: true });
  // systemd-socket-activate listens on the socket, and on the first connection execs devgated with
  // the listening socket as fd 3, LISTEN_FDS=1 and LISTEN_PID set to its pid, as systemd does.
  const activator = startGroup('systemd-socket-activate', ['-l', config.socket, ...DEVGATED, '--config', configFile]);
  for (let i = 0; !fs.existsSync(config.socket); i++) {
    if (i > 400) throw new Error(`systemd-socket-activate did not listen:\n${activator.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  const inode = fs.statSync(config.socket).ino;
  await waitHealthy(config.socket, activator);
  await waitHealthy(rwSocketPath(config.socket), activator);
  expect(activator.output()).toMatch(/Execing /);

  signalGroup(activator, 'SIGTERM');
  expect(await activator.exited).toEqual({ code: 0, signal: null });
  // systemd's socket file is still there, the very same one; the .rw socket devgated made is gone.
  const socket = fs.statSync(config.socket, { throwIfNoEntry: false });
  expect(socket?.isSocket()).toBe(true);
  expect(socket?.ino).toBe(inode);
  expect(fs.existsSync(rwSocketPath(config.socket))).toBe(false);
});

it('started without socket activation, removes both socket files it made when it stops', async () => {
  const dir = makeTempDir('devgated-own-sockets-');
  const config = harnessConfig(dir);
  const daemon = await startInProcess(config);
  expect(fs.statSync(config.socket).isSocket()).toBe(true);
  expect(fs.statSync(rwSocketPath(config.socket)).isSocket()).toBe(true);
  await daemon.stop();
  expect(fs.existsSync(config.socket)).toBe(false);
  expect(fs.existsSync(rwSocketPath(config.socket))).toBe(false);
});

it('refuses to start while another devgated answers on its sockets, and leaves that one serving', async () => {
  const dir = makeTempDir('devgated-second-');
  const config = harnessConfig(dir);
  await startInProcess(config);
  const rw = rwSocketPath(config.socket);
  const inodes = () => [config.socket, rw].map((file) => fs.statSync(file).ino);
  const before = inodes();

  await expect(startInProcess(config)).rejects.toMatchObject({
    code: 'DG_DAEMON_ALREADY_RUNNING',
    message: `another devgated is already listening on ${config.socket}`,
  });
  // Run as a command, with the same configuration: it says why, and exits 1.
  const configFile = writeConfigFile(config, path.join(dir, 'devgated.json'));
  const second = startGroup(DEVGATED[0], [...DEVGATED.slice(1), '--config', configFile]);
  expect(await second.exited).toEqual({ code: 1, signal: null });
  expect(second.output()).toContain(
    `devgated: error: DG_DAEMON_ALREADY_RUNNING: another devgated is already listening on ${config.socket}\n`,
  );

  // The first one's socket files are the very same, and it still answers on both.
  expect(inodes()).toEqual(before);
  expect((await request(config.socket, 'GET', '/v1/health')).status).toBe(200);
  expect((await request(rw, 'GET', '/v1/health')).status).toBe(200);
});

it('replaces socket files that nobody listens on any more (a killed devgated’s)', async () => {
  const dir = makeTempDir('devgated-stale-');
  const config = harnessConfig(dir);
  const rw = rwSocketPath(config.socket);
  fs.mkdirSync(path.dirname(config.socket), { recursive: true });
  // A process that listens on both paths and is SIGKILLed: the files stay, and refuse connections.
  const killed = startGroup(process.execPath, [
    '-e',
    `const net = require('node:net'); let listening = 0;
     for (const file of process.argv.slice(1))
       net.createServer().listen(file, () => ++listening === 2 && process.kill(process.pid, 'SIGKILL'));`,
    config.socket,
    rw,
  ]);
  expect(await killed.exited).toEqual({ code: null, signal: 'SIGKILL' });
  expect([config.socket, rw].map((file) => fs.statSync(file).isSocket())).toEqual([true, true]);

  // Listening where the files still were would have failed with EADDRINUSE.
  await startInProcess(config);
  expect((await request(config.socket, 'GET', '/v1/health')).status).toBe(200);
  expect((await request(rw, 'GET', '/v1/health')).status).toBe(200);
});
