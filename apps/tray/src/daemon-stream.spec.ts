import { createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { DaemonStream, SseParser, type TrayEvent } from './daemon-stream';
import { cleanUp, sleep, until } from './testing/desktop';
import { LabDaemon } from './testing/lab-daemon';

jest.setTimeout(60_000);

describe('SseParser', () => {
  it('splits server-sent events across chunks, joins data lines and drops comments', () => {
    const parser = new SseParser();
    expect(parser.push(': devgated 0.1.0\n\nevent: device\ndata: {"a"')).toEqual([]);
    expect(parser.push(':1}\n\n: keep-alive\n\nevent: ask\r\ndata: 1\r\ndata: 2\r\n\r\n')).toEqual([
      { event: 'device', data: '{"a":1}' },
      { event: 'ask', data: '1\n2' },
    ]);
    expect(parser.push('data: plain\n\n')).toEqual([{ event: 'message', data: 'plain' }]);
  });
});

describe('DaemonStream against devgated', () => {
  let lab: LabDaemon | undefined;
  let stream: DaemonStream | undefined;
  const events: TrayEvent[] = [];

  beforeAll(async () => {
    lab = await LabDaemon.start([]);
    stream = new DaemonStream(lab.api, { minBackoffMs: 50, maxBackoffMs: 200 }).start();
    stream.on((e) => events.push(e));
    await until('connected', () => stream!.isConnected);
  });

  afterAll(() =>
    cleanUp(
      () => stream?.dispose(),
      () => lab?.stop(),
      () => disposeAllLoopDisks(),
    ),
  );

  // Counted from the start of each test: loop numbers are reused, also by other processes' tests.
  let since = 0;
  beforeEach(() => (since = events.length));
  const available = (port: string) =>
    events.slice(since).filter((e) => e.type === 'available' && e.device.port === port).length;
  const gone = (port: string) => events.slice(since).filter((e) => e.type === 'gone' && e.device.port === port);

  it('takes what exists at start as the baseline: nothing is announced', () => {
    expect(events[0]).toEqual({ type: 'connected', first: true });
    // (What appears later, here or in another process's test, is news and announced.)
    expect(stream!.devices().length).toBeGreaterThan(0); // this host's own disks, empty loops...
  });

  it('announces a device once, and again neither after devgated restarts nor on reconnection', async () => {
    const disk = createLoopDisk({ sizeMiB: 8 });
    const port = `dom0:${disk.name}`;
    await until('the announcement', () => available(port) === 1);

    await lab!.stopDaemon();
    await until('the disconnection', () => events.some((e) => e.type === 'disconnected'));
    expect(stream!.isConnected).toBe(false);
    await sleep(300); // a few failed reconnection attempts
    await lab!.startDaemon();
    await until('the reconnection', () => events.some((e) => e.type === 'connected' && !e.first));
    await sleep(300);
    expect(available(port)).toBe(1);
    expect(stream!.device(port)?.hidden).toBeNull();
  });

  it('announces what appeared while devgated was down, and what went away as gone', async () => {
    const before = createLoopDisk({ sizeMiB: 8 });
    const beforePort = `dom0:${before.name}`;
    await until('the announcement', () => available(beforePort) === 1);
    const reconnections = events.filter((e) => e.type === 'connected').length;

    await lab!.stopDaemon();
    before.dispose();
    const during = createLoopDisk({ sizeMiB: 8 });
    const duringPort = `dom0:${during.name}`;
    await lab!.startDaemon();
    await until('the reconnection', () => events.filter((e) => e.type === 'connected').length > reconnections);

    expect(available(duringPort)).toBe(1);
    if (stream!.device(beforePort)?.hidden !== null) {
      expect(gone(beforePort)).toEqual([expect.objectContaining({ how: 'hidden' })]);
    } // else the kernel gave the same loop device out again: still there, nothing to say

    during.dispose();
    await until('the removal', () => gone(duringPort).length > 0);
    expect(gone(duringPort).at(-1)).toMatchObject({ how: 'hidden' });
    // Set up again: a new presence, announced again.
    const again = createLoopDisk({ sizeMiB: 8 });
    await until('the new announcement', () => available(`dom0:${again.name}`) >= 1);
  });
});
