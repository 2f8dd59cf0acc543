import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ApiError, callApi, nobodyListens, parseResponse } from './index';

describe('parseResponse', () => {
  it('reads the status and a plain or chunked body', () => {
    const plain = parseResponse(Buffer.from('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}'));
    expect(plain).toEqual({ status: 200, body: Buffer.from('{}') });
    const chunked = parseResponse(
      Buffer.from(
        'HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n3\r\n":1\r\n1\r\n}\r\n0\r\n\r\n',
      ),
    );
    expect(chunked.status).toBe(409);
    expect(chunked.body.toString()).toBe('{"a":1}');
    expect(parseResponse(Buffer.from('garbage')).status).toBe(0);
  });
});

describe('callApi', () => {
  let dir: string;
  let server: net.Server;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-client-'))));
  afterEach(async () => {
    await new Promise((resolve) => server?.close(resolve));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function serve(file: string, answer: (request: string) => string): Promise<void> {
    server = net.createServer((socket) => {
      let request = '';
      socket.on('data', (chunk) => {
        request += chunk;
        if (request.includes('\r\n\r\n')) socket.end(answer(request));
      });
    });
    return new Promise((resolve) => server.listen(file, resolve));
  }

  it('sends reads to the socket and changes to its .rw sibling, with who is asking', async () => {
    let seen = '';
    await serve(path.join(dir, 'api.sock.rw'), (request) => {
      seen = request;
      return 'HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{"ok":true}';
    });
    await expect(callApi(path.join(dir, 'api.sock'), 'POST', '/v1/x', { a: 1 }, { actor: 'test' })).resolves.toEqual({
      ok: true,
    });
    expect(seen).toMatch(/^POST \/v1\/x HTTP\/1\.1\r\n/);
    expect(seen).toContain('x-devgate-actor: test\r\n');
    expect(seen.endsWith('{"a":1}')).toBe(true);
  });

  it('turns coded answers and missing daemons into ApiErrors', async () => {
    const file = path.join(dir, 'api.sock');
    await serve(file, () => 'HTTP/1.1 404 Not Found\r\n\r\n{"error":{"code":"DG_X","message":"no","hint":"h"}}');
    await expect(callApi(file, 'GET', '/v1/y')).rejects.toMatchObject({
      code: 'DG_X',
      message: 'no',
      hint: 'h',
      status: 404,
    });
    const missing = callApi(path.join(dir, 'nothing.sock'), 'GET', '/v1/y');
    await expect(missing).rejects.toBeInstanceOf(ApiError);
    await expect(missing).rejects.toMatchObject({ code: 'DG_DAEMON_UNAVAILABLE' });
  });

  it('says when nobody listens on the socket (a killed daemon left it), and only then', async () => {
    const stale = path.join(dir, 'stale.sock');
    await leaveSocketsOfKilledProcess([stale, `${stale}.rw`]);
    expect(fs.statSync(stale).isSocket()).toBe(true);
    for (const method of ['GET', 'POST'] as const) {
      const refused = await callApi(stale, method, '/v1/devices').catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: 'DG_DAEMON_UNAVAILABLE', errno: 'ECONNREFUSED' });
      expect(nobodyListens(refused)).toBe(true);
    }
    // No file at all, and a daemon that answers (even with an error), are something else.
    const missing = await callApi(path.join(dir, 'nothing.sock'), 'GET', '/').catch((e: unknown) => e);
    expect(nobodyListens(missing)).toBe(false);
    const live = path.join(dir, 'live.sock');
    await serve(live, () => 'HTTP/1.1 409 Conflict\r\n\r\n{"error":{"code":"DG_X","message":"no"}}');
    expect(nobodyListens(await callApi(live, 'GET', '/').catch((e: unknown) => e))).toBe(false);
  });
});

/** Unix socket files whose listener was SIGKILLed, as a crashed devgated leaves them. */
async function leaveSocketsOfKilledProcess(files: readonly string[]): Promise<void> {
  const listen = files.map((f) => `require('net').createServer().listen(${JSON.stringify(f)}, ready)`).join(';');
  const script = `let n = ${files.length}; const ready = () => --n || console.log('listening'); ${listen}`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('listening') && resolve());
      child.once('exit', (code) => reject(new Error(`the listener exited early (${code})`)));
    });
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
}
