import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { DevgateError } from '@devgate/core';
import { isQmpCommandError, QmpClient, type QmpEvent } from './qmp-client.js';
import { Cleanup, type FakePeer, fakeQmpServer, startQemu } from './testing/fixtures.js';
import { labQemuArgs } from './lab.js';

jest.setTimeout(30_000);

const cleanup = new Cleanup();
afterEach(() => cleanup.run());

/** Connects and registers the client for cleanup. */
async function connect(socket: string, options?: Parameters<typeof QmpClient.connect>[1]): Promise<QmpClient> {
  const client = await QmpClient.connect(socket, options);
  cleanup.defer(() => client.destroy());
  return client;
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof DevgateError) return error.code;
    throw error;
  }
  throw new Error('expected a rejection');
}

describe('QmpClient against a real QEMU', () => {
  let socket: string;
  let pid: number;

  beforeEach(async () => {
    const qemu = await startQemu(cleanup, await cleanup.tempDir());
    socket = qemu.socket;
    pid = qemu.pid;
  });

  it('reads the greeting and negotiates capabilities', async () => {
    const client = await connect(socket);
    expect(client.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(client.greeting.capabilities).toContain('oob');
    expect(client.connected).toBe(true);
    // Only possible after qmp_capabilities: before it QEMU answers CommandNotFound.
    await expect(client.execute('query-version')).resolves.toMatchObject({ qemu: client.greeting.version.qemu });
  });

  it('runs a command and returns its result', async () => {
    const client = await connect(socket);
    await expect(client.execute('query-status')).resolves.toMatchObject({ status: 'prelaunch', running: false });
    const peripherals = await client.execute<{ name: string }[]>('qom-list', { path: '/machine/peripheral' });
    expect(peripherals.map((p) => p.name)).toEqual(expect.arrayContaining(['xhci', 'rp1', 'rp2']));
  });

  it('matches concurrent replies to their requests by id', async () => {
    const client = await connect(socket);
    const ids = ['xhci', 'rp1', 'rp2'];
    const replies = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        client.execute('qom-get', { path: `/machine/peripheral/${ids[i % 3]}`, property: 'type' }),
      ),
    );
    replies.forEach((type, i) => expect(type).toBe(i % 3 === 0 ? 'qemu-xhci' : 'pcie-root-port'));
  });

  it("turns an error reply into DG_QMP_COMMAND_FAILED carrying QMP's class and desc", async () => {
    const client = await connect(socket);
    const error = await client.execute('device_del', { id: 'nope' }).catch((e: unknown) => e);
    expect(isQmpCommandError(error)).toBe(true);
    expect(error).toMatchObject({ code: 'DG_QMP_COMMAND_FAILED', qmpClass: 'DeviceNotFound' });
    expect((error as Error).message).toMatch(/^QMP command 'device_del' failed: DeviceNotFound: .*nope/);

    await expect(client.execute('no-such-command')).rejects.toMatchObject({ qmpClass: 'CommandNotFound' });
    // The connection survives QMP errors.
    await expect(client.execute('query-status')).resolves.toMatchObject({ status: 'prelaunch' });
  });

  it('delivers events: cont -> RESUME, stop -> STOP', async () => {
    const client = await connect(socket);
    const seen: string[] = [];
    client.events$.subscribe((e) => seen.push(e.event));

    const resumed = client.waitForEvent('RESUME');
    await client.execute('cont');
    const resume: QmpEvent = await resumed;
    expect(resume.timestamp?.seconds).toBeGreaterThan(0);

    const stopped = client.waitForEvent('STOP');
    await client.execute('stop');
    await stopped;
    expect(seen).toEqual(['RESUME', 'STOP']);
    await expect(client.execute('query-status')).resolves.toMatchObject({ status: 'paused' });
  });

  it('waitForEvent filters with the predicate and times out with DG_QMP_TIMEOUT', async () => {
    const client = await connect(socket);
    const never = client.waitForEvent('RESUME', () => false, 300);
    await client.execute('cont');
    await expect(never).rejects.toMatchObject({
      code: 'DG_QMP_TIMEOUT',
      message: expect.stringContaining('event RESUME'),
    });
  });

  it('rejects a pending request with DG_QMP_DISCONNECTED when QEMU is SIGKILLed mid-request', async () => {
    const client = await connect(socket);
    const completed = jest.fn();
    client.events$.subscribe({ complete: completed });
    // SIGSTOP first, so QEMU cannot answer before it dies: the request is surely in flight.
    process.kill(pid, 'SIGSTOP');
    const pending = client.execute('query-status');
    const event = client.waitForEvent('STOP');
    process.kill(pid, 'SIGKILL');

    await expect(pending).rejects.toMatchObject({ code: 'DG_QMP_DISCONNECTED' });
    await expect(event).rejects.toMatchObject({ code: 'DG_QMP_DISCONNECTED' });
    expect(completed).toHaveBeenCalled();
    expect(client.connected).toBe(false);
    // Later calls fail at once, with the same code.
    expect(await codeOf(client.execute('query-status'))).toBe('DG_QMP_DISCONNECTED');
  });

  it('serves one client at a time: a second client times out waiting for the greeting', async () => {
    const first = await connect(socket);
    const error = await QmpClient.connect(socket, { handshakeTimeoutMs: 300 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'DG_QMP_TIMEOUT', hint: expect.stringContaining('one client at a time') });

    await first.close();
    const second = await connect(socket);
    await expect(second.execute('query-status')).resolves.toMatchObject({ status: 'prelaunch' });
  });

  it('close() ends the connection; later commands are DG_QMP_DISCONNECTED', async () => {
    const client = await connect(socket);
    await client.close();
    expect(await codeOf(client.execute('query-status'))).toBe('DG_QMP_DISCONNECTED');
    // The socket is free again.
    const again = await connect(socket);
    await expect(again.execute('query-status')).resolves.toBeDefined();
  });
});

describe('QmpClient.connect retries', () => {
  it('waits, bounded, for a socket that appears later', async () => {
    const dir = await cleanup.tempDir();
    const socket = join(dir, 'late.qmp');
    const connecting = QmpClient.connect(socket, { retryForMs: 10_000 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const child = spawn('qemu-system-x86_64', labQemuArgs('late', socket, join(dir, 'late.pid')), { stdio: 'ignore' });
    cleanup.pid(child.pid!);
    const client = await connecting;
    cleanup.defer(() => client.destroy());
    await expect(client.execute('query-status')).resolves.toMatchObject({ status: 'prelaunch' });
  });

  it('gives up with DG_QMP_UNREACHABLE after retryForMs', async () => {
    const socket = join(await cleanup.tempDir(), 'missing.qmp');
    const started = Date.now();
    const error = await QmpClient.connect(socket, { retryForMs: 300 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'DG_QMP_UNREACHABLE', message: expect.stringContaining('ENOENT') });
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('fails at once without retryForMs', async () => {
    const socket = join(await cleanup.tempDir(), 'missing.qmp');
    await expect(QmpClient.connect(socket)).rejects.toMatchObject({ code: 'DG_QMP_UNREACHABLE' });
  });
});

// A real QEMU cannot be made to hang or to speak garbage; these use a fake peer.
describe('QmpClient against a misbehaving peer', () => {
  let socket: string;
  beforeEach(async () => {
    socket = join(await cleanup.tempDir(), 'fake.qmp');
  });

  it('times out a command the peer never answers, and stays usable', async () => {
    let peerReady!: (peer: FakePeer) => void;
    const peerPromise = new Promise<FakePeer>((resolve) => (peerReady = resolve));
    await fakeQmpServer(cleanup, socket, (peer) => void peer.handshake().then(peerReady));
    const client = await connect(socket);
    const peer = await peerPromise;

    const started = Date.now();
    const hung = await client.execute('query-status', undefined, { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(hung).toMatchObject({ code: 'DG_QMP_TIMEOUT', message: expect.stringContaining("'query-status'") });
    expect(Date.now() - started).toBeLessThan(2_000);

    // The late reply to the timed-out request is dropped; the next request gets its own reply.
    const late = await peer.next();
    const next = client.execute('query-name');
    const request = await peer.next();
    peer.send({ return: { status: 'late' }, id: late['id'] });
    peer.send({ return: { name: 'fake' }, id: request['id'] });
    await expect(next).resolves.toEqual({ name: 'fake' });
  });

  it('times out the handshake when the peer greets but never answers qmp_capabilities', async () => {
    await fakeQmpServer(cleanup, socket, (peer) => void peer.greet());
    expect(await codeOf(QmpClient.connect(socket, { handshakeTimeoutMs: 200 }))).toBe('DG_QMP_TIMEOUT');
  });

  it('times out when there is no greeting at all', async () => {
    await fakeQmpServer(cleanup, socket, () => {});
    const error = await QmpClient.connect(socket, { handshakeTimeoutMs: 200 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'DG_QMP_TIMEOUT', message: expect.stringContaining('the greeting') });
  });

  it('reports a peer that does not speak QMP as DG_QMP_PROTOCOL', async () => {
    await fakeQmpServer(cleanup, socket, (peer) => void peer.connection.write('SSH-2.0-OpenSSH\r\n'));
    expect(await codeOf(QmpClient.connect(socket))).toBe('DG_QMP_PROTOCOL');
  });

  it('rejects pending requests with DG_QMP_DISCONNECTED when the peer closes mid-request', async () => {
    await fakeQmpServer(cleanup, socket, (peer) => {
      void peer.handshake().then(async () => {
        await peer.next();
        peer.connection.destroy();
      });
    });
    const client = await connect(socket);
    expect(await codeOf(client.execute('query-status'))).toBe('DG_QMP_DISCONNECTED');
  });

  it('handles replies split across and packed into chunks', async () => {
    await fakeQmpServer(cleanup, socket, (peer) => {
      void peer.handshake().then(async () => {
        const a = await peer.next();
        const b = await peer.next();
        const text = JSON.stringify({ return: 1, id: b['id'] }) + '\r\n' + JSON.stringify({ return: 0, id: a['id'] });
        peer.connection.write(text.slice(0, 7));
        setTimeout(() => peer.connection.write(text.slice(7) + '\r\n'), 20);
      });
    });
    const client = await connect(socket);
    // Falsy return values (0) must still resolve.
    await expect(Promise.all([client.execute('a'), client.execute('b')])).resolves.toEqual([0, 1]);
  });
});
