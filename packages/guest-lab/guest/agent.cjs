'use strict';
/**
 * The devgate lab agent: runs inside a lab guest (started by stage 2 with the host's own node, seen
 * through the 9p root) and serves the host on a virtio console (`/dev/hvc0`), one JSON object per
 * line each way. It runs commands (output streamed back in base64 chunks, then the exit status),
 * and waits for conditions inside the guest (a kernel uevent, a path appearing or disappearing)
 * until a deadline, woken by the events themselves.
 *
 *   host -> guest  {"id":1,"op":"exec","argv":["ls","/"],"env":{},"cwd":"/","stdin":"<base64>"}
 *                  {"id":2,"op":"kill","target":1,"signal":"SIGTERM"}
 *                  {"id":3,"op":"mark"}                      the uevent cursor now (starts the monitor)
 *                  {"id":4,"op":"wait","condition":{"uevent":{"ACTION":"add"},"since":0},"timeoutMs":5000}
 *                  {"id":5,"op":"wait","condition":{"path":"/dev/sda","exists":true},"timeoutMs":5000}
 *                  {"id":6,"op":"ping"}
 *   guest -> host  {"hello":{"pid":123,"uptime":4.2}}
 *                  {"id":1,"stream":"stdout","data":"<base64>"}  {"id":1,"exit":0,"signal":null}
 *                  {"id":3,"ok":true,"cursor":17}   {"id":4,"ok":true,"event":{...}}   {"id":4,"error":"..."}
 *
 * A virtio console is a tty: it is put in raw mode (no echo, no output processing) once open. Lines
 * that are not JSON objects are ignored on both sides. The host may connect and disconnect at will
 * (what the guest writes meanwhile is dropped by QEMU); nothing here depends on who listens.
 */
const fs = require('node:fs');
const path = require('node:path');
const tty = require('node:tty');
const { spawn, spawnSync } = require('node:child_process');

const device = process.argv[2] || '/dev/hvc0';
const BUSYBOX = '/devgate-lab/busybox';
const BASE_ENV = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  LANG: 'C.UTF-8',
  TERM: 'dumb',
  // The guest sees the host's files: keep devgate's own state (the domain registry) guest-local.
  XDG_STATE_HOME: '/run/devgate-lab/state',
};

const { O_RDONLY, O_WRONLY, O_NOCTTY } = fs.constants;
const inFd = fs.openSync(device, O_RDONLY | O_NOCTTY);
const outFd = fs.openSync(device, O_WRONLY | O_NOCTTY);
// Raw mode on the device (termios belong to the tty, so either descriptor will do).
spawnSync(BUSYBOX, ['stty', 'raw', '-echo', '-opost'], { stdio: [inFd, 'ignore', 'inherit'] });
const input = new tty.ReadStream(inFd);
const output = new tty.WriteStream(outFd);

function send(message) {
  output.write(JSON.stringify(message) + '\n');
}

// -- kernel uevents, from `udevadm monitor --kernel --property` (started on first use)

const uevents = []; // { seq, action, devpath, subsystem, kernelTime, agentTime, props }
const ueventListeners = new Set();
let monitor; // Promise<void> once started

function startMonitor() {
  if (monitor) return monitor;
  monitor = new Promise((resolve, reject) => {
    const child = spawn('udevadm', ['monitor', '--kernel', '--property'], { stdio: ['ignore', 'pipe', 'inherit'] });
    child.on('error', reject);
    child.on('exit', (code) => {
      monitor = undefined;
      reject(new Error(`udevadm monitor exited (${code})`));
    });
    let buffer = '';
    let ready = false;
    let current;
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      buffer += chunk;
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (!ready) {
          // The netlink socket is bound before this header line is printed.
          if (line.startsWith('KERNEL - ')) {
            ready = true;
            resolve();
          }
          continue;
        }
        const head = /^KERNEL\[(\d+\.\d+)\]/.exec(line);
        if (head) {
          current = { kernelTime: Number(head[1]), agentTime: monotonicSeconds(), props: {} };
        } else if (line === '' && current) {
          const event = {
            seq: uevents.length + 1,
            action: current.props.ACTION,
            devpath: current.props.DEVPATH,
            subsystem: current.props.SUBSYSTEM,
            kernelTime: current.kernelTime,
            agentTime: current.agentTime,
            props: current.props,
          };
          uevents.push(event);
          current = undefined;
          for (const listener of [...ueventListeners]) listener(event);
        } else if (current) {
          const eq = line.indexOf('=');
          if (eq > 0) current.props[line.slice(0, eq)] = line.slice(eq + 1);
        }
      }
    });
  });
  monitor.catch(() => undefined);
  return monitor;
}

function monotonicSeconds() {
  return Number(process.hrtime.bigint()) / 1e9;
}

/** `match` values are exact strings, or `/regex/` strings. */
function ueventMatches(event, match) {
  for (const [key, expected] of Object.entries(match || {})) {
    const actual = event.props[key];
    if (actual === undefined) return false;
    if (expected.length > 1 && expected.startsWith('/') && expected.endsWith('/')) {
      if (!new RegExp(expected.slice(1, -1)).test(actual)) return false;
    } else if (actual !== expected) return false;
  }
  return true;
}

// -- requests

const children = new Map(); // request id -> ChildProcess

function exec(request) {
  const { id, argv, env, cwd, stdin, timeoutMs } = request;
  if (!Array.isArray(argv) || argv.length === 0) return send({ id, error: 'exec needs argv' });
  let child;
  try {
    child = spawn(argv[0], argv.slice(1), {
      env: { ...BASE_ENV, ...env },
      cwd: cwd || '/',
      stdio: ['pipe', 'pipe', 'pipe'],
    });
  } catch (error) {
    return send({ id, exit: 127, signal: null, spawnError: String(error.message || error) });
  }
  children.set(id, child);
  let timer;
  if (timeoutMs > 0) timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  let spawnError;
  child.on('error', (error) => {
    spawnError = String(error.message || error);
  });
  child.stdout.on('data', (data) => send({ id, stream: 'stdout', data: data.toString('base64') }));
  child.stderr.on('data', (data) => send({ id, stream: 'stderr', data: data.toString('base64') }));
  child.stdin.on('error', () => undefined); // a command that does not read its input
  child.stdin.end(stdin ? Buffer.from(stdin, 'base64') : undefined);
  child.on('close', (code, signal) => {
    clearTimeout(timer);
    children.delete(id);
    send({ id, exit: spawnError ? 127 : code, signal, ...(spawnError ? { spawnError } : {}) });
  });
}

function kill(request) {
  const child = children.get(request.target);
  if (child) child.kill(request.signal || 'SIGTERM');
  send({ id: request.id, ok: true, found: Boolean(child) });
}

function wait(request) {
  const { id, condition = {}, timeoutMs = 10_000 } = request;
  let done = false;
  let watcher;
  let poll;
  const cleanups = [];
  const finish = (message) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    clearInterval(poll);
    watcher?.close();
    for (const cleanup of cleanups) cleanup();
    send({ id, ...message });
  };
  const timer = setTimeout(() => finish({ error: 'timeout' }), timeoutMs);

  if (condition.uevent) {
    const since = Number(condition.since) || 0;
    const found = uevents.find((event) => event.seq > since && ueventMatches(event, condition.uevent));
    if (found) return finish({ ok: true, event: found });
    const listener = (event) => {
      if (event.seq > since && ueventMatches(event, condition.uevent)) finish({ ok: true, event });
    };
    ueventListeners.add(listener);
    cleanups.push(() => ueventListeners.delete(listener));
    startMonitor().catch((error) => finish({ error: String(error.message || error) }));
    return;
  }
  if (typeof condition.path === 'string') {
    const want = condition.exists !== false;
    const check = () => {
      if (fs.existsSync(condition.path) === want) finish({ ok: true, uptime: uptime() });
    };
    // sysfs sends no inotify events, but every device change there comes with a uevent; other
    // file systems (devtmpfs, tmpfs, the overlay) are watched directly. A slow poll backs both up.
    const listener = () => check();
    ueventListeners.add(listener);
    cleanups.push(() => ueventListeners.delete(listener));
    startMonitor().then(check, () => undefined);
    const rearm = () => {
      watcher?.close();
      watcher = undefined;
      let dir = path.dirname(condition.path);
      while (!fs.existsSync(dir) && dir !== '/') dir = path.dirname(dir);
      try {
        watcher = fs.watch(dir, () => {
          check();
          if (!done) rearm();
        });
        watcher.on('error', () => undefined);
      } catch {
        // not watchable: the uevents and the poll remain
      }
    };
    rearm();
    poll = setInterval(check, 250);
    check();
    return;
  }
  finish({ error: 'unknown condition' });
}

function uptime() {
  return Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
}

function handle(request) {
  switch (request.op) {
    case 'exec':
      return exec(request);
    case 'kill':
      return kill(request);
    case 'wait':
      return wait(request);
    case 'mark':
      return startMonitor().then(
        () => send({ id: request.id, ok: true, cursor: uevents.length }),
        (error) => send({ id: request.id, error: String(error.message || error) }),
      );
    case 'uevents':
      return send({ id: request.id, ok: true, events: uevents.filter((e) => e.seq > (Number(request.since) || 0)) });
    case 'ping':
      return send({ id: request.id, ok: true, uptime: uptime() });
    default:
      return send({ id: request.id, error: `unknown op ${JSON.stringify(request.op)}` });
  }
}

let buffer = '';
input.setEncoding('utf8');
input.on('data', (chunk) => {
  buffer += chunk;
  let newline;
  while ((newline = buffer.indexOf('\n')) >= 0) {
    const line = buffer.slice(0, newline).trim();
    buffer = buffer.slice(newline + 1);
    let request;
    try {
      request = JSON.parse(line);
    } catch {
      continue;
    }
    if (request && typeof request === 'object' && typeof request.id === 'number') handle(request);
  }
});

fs.mkdirSync(BASE_ENV.XDG_STATE_HOME, { recursive: true });
send({ hello: { pid: process.pid, uptime: uptime() } });
