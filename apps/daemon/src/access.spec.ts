/**
 * Who may use which socket, as the kernel enforces it: with `access.readGroup` set to `nogroup`, a
 * process running as `nobody` (uid and gid 65534, no supplementary groups) can read through the
 * main socket but cannot even connect to `<socket>.rw`, and the read-only socket has no route that
 * changes state. The client is a separate `node -e` process started with that uid and gid.
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rwSocketPath } from './devgated.js';
import { groupId } from './access.js';
import {
  ApiClient,
  DaemonProcess,
  cleanupHarness,
  harnessConfig,
  registerVms,
  makeTempDir,
  startInProcess,
} from './testing/daemon-harness.js';

jest.setTimeout(30_000);

const NOBODY = 65_534;

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(() => cleanupHarness());

// The client, as nobody: each request's status and error code, or the connection error's code.
const CLIENT = `
const http = require('node:http');
const [readSocket, rwSocket] = process.argv.slice(1);
const call = (socketPath, method, path, body) => new Promise((resolve) => {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const req = http.request(
    { socketPath, method, path, agent: false, headers: payload ? { 'content-type': 'application/json' } : {} },
    (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => {
        const json = JSON.parse(text);
        resolve({ status: res.statusCode, code: json.error && json.error.code, devices: Array.isArray(json.devices) });
      });
    },
  );
  req.on('error', (error) => resolve({ error: error.code }));
  req.setTimeout(5000, () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
  req.end(payload);
});
const assignment = { class: 'block', frontend: 'work', device: 'dom0:sdz', only: 'port' };
(async () => {
  const result = {
    uid: process.getuid(),
    gid: process.getgid(),
    groups: process.getgroups(),
    readDevices: await call(readSocket, 'GET', '/v1/devices'),
    readAssign: await call(readSocket, 'POST', '/v1/assignments', assignment),
    rwDevices: await call(rwSocket, 'GET', '/v1/devices'),
    rwAssign: await call(rwSocket, 'POST', '/v1/assignments', assignment),
  };
  process.stdout.write(JSON.stringify(result));
})();
`;

function runAsNobody(readSocket: string, rwSocket: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', CLIENT, readSocket, rwSocket], {
      uid: NOBODY,
      gid: NOBODY,
      cwd: '/',
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`client as nobody ended with ${code ?? signal}: ${err}`));
      resolve(JSON.parse(out));
    });
  });
}

it('lets nobody (in the read group) read through the main socket, and not connect to .rw', async () => {
  expect(process.getuid?.()).toBe(0); // the permissions only mean something when the daemon is root
  expect(groupId('nogroup')).toBe(NOBODY);
  // Sockets live in a temp directory: nobody must be able to traverse to them.
  const dir = makeTempDir('devgated-access-', 0o755);
  const config = harnessConfig(dir, { access: { readGroup: 'nogroup', users: [], groups: [] } });
  registerVms(config, ['work']);
  await startInProcess(config);
  const rw = rwSocketPath(config.socket);

  const read = fs.statSync(config.socket);
  expect({ mode: read.mode & 0o777, uid: read.uid, gid: read.gid }).toEqual({ mode: 0o660, uid: 0, gid: NOBODY });
  const write = fs.statSync(rw);
  expect({ mode: write.mode & 0o777, uid: write.uid }).toEqual({ mode: 0o600, uid: 0 });

  const result = await runAsNobody(config.socket, rw);
  expect(result).toEqual({
    uid: NOBODY,
    gid: NOBODY,
    groups: [NOBODY],
    readDevices: { status: 200, devices: true },
    // The read-only socket has no state-changing routes at all.
    readAssign: { status: 404, code: 'DG_API_NOT_FOUND', devices: false },
    rwDevices: { error: 'EACCES' },
    rwAssign: { error: 'EACCES' },
  });

  // Root (in the .rw socket's ACL by ownership) can change state; nobody's attempts changed nothing.
  const client = new ApiClient(config.socket);
  expect((await client.get<{ assignments: unknown[] }>('/v1/assignments')).body.assignments).toEqual([]);
  const assigned = await client.post('/v1/assignments', {
    class: 'block',
    frontend: 'work',
    device: 'dom0:sdz',
    only: 'port',
  });
  expect(assigned.status).toBe(200);
  const audit = (await client.get<{ entries: { actor: string }[] }>('/v1/audit')).body.entries;
  expect(audit.map((e) => e.actor)).toEqual(['unnamed client via devgate.sock.rw']);
});

/** Whether a process with this uid and gid (and no other group) can connect to the Unix socket `file`. */
function connectAs(uid: number, gid: number, file: string): Promise<string> {
  const script = `require('node:net').connect(process.argv[1])
    .on('connect', function () { process.stdout.write('connected'); this.destroy(); })
    .on('error', (error) => process.stdout.write(error.code));`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script, file], {
      uid,
      gid,
      cwd: '/',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.on('error', reject);
    child.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
}

it('gives .rw to each user and group that resolves through the name service, and names each one that does not', async () => {
  const dir = makeTempDir('devgated-acl-', 0o755);
  // 'dg-directory' exists only in the name service, as an LDAP or sssd group does (not in
  // /etc/group): a stand-in getent, first on devgated's PATH, knows it and asks the real one for the rest.
  const DIRECTORY_GID = 70_001;
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(
    path.join(bin, 'getent'),
    `#!/bin/sh\n[ "$1 $2" = "group dg-directory" ] && echo 'dg-directory:*:${DIRECTORY_GID}:' && exit 0\n` +
      `exec /usr/bin/getent "$@"\n`,
    { mode: 0o755 },
  );
  expect(fs.readFileSync('/etc/group', 'utf8')).not.toMatch(/^dg-directory:/m);
  const pathBefore = process.env.PATH;
  process.env.PATH = `${bin}:${pathBefore}`; // what DaemonProcess passes on to devgated
  cleanups.push(() => (process.env.PATH = pathBefore));
  const config = harnessConfig(dir, {
    access: { users: ['dg-no-such-user', 'nobody'], groups: ['dg-directory', 'dg-no-such-group'] },
  });
  const daemon = await DaemonProcess.start(config);
  const rw = rwSocketPath(config.socket);

  const warnings = daemon
    .log()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => (JSON.parse(line) as { msg: string }).msg)
    .filter((msg) => msg.includes(rw));
  expect(warnings).toEqual([
    `user 'dg-no-such-user' does not resolve (getent passwd dg-no-such-user): no access to ${rw} for it`,
    `group 'dg-no-such-group' does not resolve (getent group dg-no-such-group): no access to ${rw} for it`,
  ]);
  const acl = execFileSync('getfacl', ['-n', '-p', '-c', rw], { encoding: 'utf8' }).split('\n');
  expect(acl.filter((line) => /^(user|group):\d+:/.test(line))).toEqual([
    `user:${NOBODY}:rw-`,
    `group:${DIRECTORY_GID}:rw-`,
  ]);
  // The kernel enforces them: nobody connects, so does a process whose only group is the
  // directory's, and a stranger does not.
  expect(await connectAs(NOBODY, NOBODY, rw)).toBe('connected');
  expect(await connectAs(70_002, DIRECTORY_GID, rw)).toBe('connected');
  expect(await connectAs(70_002, 70_002, rw)).toBe('EACCES');
  await daemon.stop();
});
