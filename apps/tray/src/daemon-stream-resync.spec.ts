import { DaemonApi } from './daemon-api';
import { DaemonStream, type TrayEvent } from './daemon-stream';
import { cleanUp, sleep, until } from './testing/desktop';
import { FakeDaemon } from './testing/fake-daemon';

// The stream drops while the state is still being read after it opened: a stand-in devgated that
// answers /v1/devices only when told to (no loop devices needed).
jest.setTimeout(30_000);

let fake: FakeDaemon | undefined;
let stream: DaemonStream | undefined;

afterAll(() =>
  cleanUp(
    () => stream?.dispose(),
    () => fake?.dispose(),
  ),
);

it('does not report itself connected when the stream dropped while the state was read', async () => {
  fake = await FakeDaemon.start();
  let release: () => void = () => undefined;
  fake.holdReads = new Promise((resolve) => (release = resolve));
  const events: TrayEvent[] = [];
  // The retry comes long after the test ends: only the dropped connection is looked at.
  stream = new DaemonStream(new DaemonApi(fake.socket), { minBackoffMs: 60_000 }).start();
  stream.on((event) => events.push(event));

  await until('the state being read', () => fake!.requests.some((r) => r.route.startsWith('/v1/devices')));
  fake.dropStreams();
  await sleep(100);
  release();
  await sleep(200);

  expect(stream.isConnected).toBe(false);
  expect(events.filter((e) => e.type === 'connected')).toEqual([]);
});
