import { join } from 'node:path';
import { MAX_QMP_LINE, QmpClient } from './qmp-client.js';
import { Cleanup, type FakePeer, fakeQmpServer } from './testing/fixtures.js';

// Peers that greet like QEMU and then send what QEMU never would. A fake socket server only: no QEMU.
jest.setTimeout(20_000);

const cleanup = new Cleanup();
afterEach(() => cleanup.run());

/** A client connected to a fake peer that has done the handshake; `then` scripts the rest. */
async function connectToPeer(then: (peer: FakePeer) => void): Promise<QmpClient> {
  const socket = join(await cleanup.tempDir(), 'fake.qmp');
  await fakeQmpServer(cleanup, socket, (peer) => void peer.handshake().then(then));
  const client = await QmpClient.connect(socket);
  cleanup.defer(() => client.destroy());
  return client;
}

it('a message that is JSON but not an object (null) ends the connection, not devgated', async () => {
  const client = await connectToPeer((peer) => {
    void peer.next().then(() => peer.connection.write('null\r\n'));
  });
  await expect(client.execute('query-status', undefined, { timeoutMs: 3_000 })).rejects.toMatchObject({
    code: 'DG_QMP_DISCONNECTED',
    message: expect.stringContaining('unparsable message null'),
  });
  expect(client.connected).toBe(false);
});

it('a large answer (12 MiB, as many chunks) is read in a moment, not in seconds per megabyte', async () => {
  const big = 'x'.repeat(12 * 1024 * 1024);
  const client = await connectToPeer((peer) => {
    void peer.next().then((request) => peer.send({ return: big, id: request['id'] }));
  });
  const started = Date.now();
  await expect(client.execute('query-qmp-schema', undefined, { timeoutMs: 10_000 })).resolves.toHaveLength(big.length);
  // Re-scanning the whole buffer for each chunk took about 10 s here.
  expect(Date.now() - started).toBeLessThan(3_000);
});

it('a message without end is cut off at MAX_QMP_LINE, not buffered until memory runs out', async () => {
  const client = await connectToPeer((peer) => {
    void peer.next().then(() => {
      const block = '['.repeat(1024 * 1024);
      for (let written = 0; written <= MAX_QMP_LINE; written += block.length) peer.connection.write(block);
    });
  });
  await expect(client.execute('query-status', undefined, { timeoutMs: 5_000 })).rejects.toMatchObject({
    code: 'DG_QMP_DISCONNECTED',
    message: expect.stringContaining(`longer than ${MAX_QMP_LINE} bytes`),
  });
});

it('a greeting without end is refused as not QMP', async () => {
  const socket = join(await cleanup.tempDir(), 'fake.qmp');
  await fakeQmpServer(cleanup, socket, (peer) => void peer.connection.write('{"QMP": '.padEnd(128 * 1024, ' ')));
  await expect(QmpClient.connect(socket, { handshakeTimeoutMs: 3_000 })).rejects.toMatchObject({
    code: 'DG_QMP_PROTOCOL',
  });
});
