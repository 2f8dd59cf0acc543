/**
 * `GET /v1/events` with a client that stops reading: what devgated queues for it stays under
 * EVENT_STREAM_MAX_BUFFERED (plus the frame that would have crossed it), then its stream is ended and
 * logged; a client that reads gets every event and keeps its stream. devgated runs in-process, so
 * the server side of each response can be watched: every write to an event stream records the
 * response's writableLength (its own queue and its socket's).
 */
import { EventEmitter } from 'node:events';
import * as http from 'node:http';
import * as net from 'node:net';
import pino from 'pino';
import { type DaemonEvent } from '@devgate/service';
import { Devgated } from '../devgated.js';
import { cleanupHarness, harnessConfig, makeTempDir } from '../testing/daemon-harness.js';
import { EVENT_STREAM_MAX_BUFFERED } from './server.js';

jest.setTimeout(60_000);

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(() => cleanupHarness());

/** devgated in-process with its log lines kept; stopped after the test. */
async function startDaemon(): Promise<{ daemon: Devgated; log: LogLines }> {
  const log = new LogLines();
  const config = harnessConfig(makeTempDir('devgated-events-'));
  const daemon = await Devgated.start(config, pino({ level: 'warn' }, { write: (line: string) => log.add(line) }));
  cleanups.push(() => daemon.stop());
  return { daemon, log };
}

class LogLines extends EventEmitter {
  readonly lines: { msg: string; buffered?: number; limit?: number }[] = [];
  add(line: string): void {
    this.lines.push(JSON.parse(line));
    this.emit('line');
  }
  /** The first line with this message, once it is logged. */
  next(msg: string, timeoutMs = 10_000): Promise<LogLines['lines'][number]> {
    return waitFor(this, 'line', () => this.lines.find((l) => l.msg === msg), `log line '${msg}'`, timeoutMs);
  }
}

/** Resolves with `check()`'s first defined value, checked now and on each `event` of `emitter`. */
function waitFor<T>(
  emitter: EventEmitter,
  event: string,
  check: () => T | undefined,
  what: string,
  timeoutMs = 10_000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      emitter.off(event, test);
    };
    const test = () => {
      const value = check();
      if (value !== undefined) {
        done();
        resolve(value);
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    emitter.on(event, test);
    test();
  });
}

/** An event stream client: counts the complete frames of type `domain` it has read. */
class StreamClient extends EventEmitter {
  frames = 0;
  bytes = 0;
  closed = false;
  private pending = '';

  constructor(readonly socket: net.Socket) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.bytes += Buffer.byteLength(chunk);
      const parts = (this.pending + chunk).split('\n\n');
      this.pending = parts.pop()!;
      this.frames += parts.filter((p) => p.includes('event: domain\n')).length;
      this.emit('progress');
    });
    socket.on('close', () => {
      this.closed = true;
      this.emit('progress');
    });
    socket.on('error', () => undefined); // reset by the server: 'close' follows
    cleanups.push(() => socket.destroy());
  }

  /** Connected, the request sent, and the stream's first line read. */
  static async open(socketPath: string): Promise<StreamClient> {
    const client = new StreamClient(net.connect({ path: socketPath }));
    client.socket.write('GET /v1/events HTTP/1.1\r\nHost: devgated\r\n\r\n');
    await waitFor(client, 'progress', () => (client.bytes > 0 ? true : undefined), 'the stream to start');
    return client;
  }

  untilFrames(count: number): Promise<true> {
    return waitFor(
      this,
      'progress',
      () => {
        if (this.frames >= count) return true;
        if (this.closed) throw new Error(`stream closed after ${this.frames} of ${count} frames`);
        return undefined;
      },
      `${count} frames`,
    );
  }

  untilClosed(): Promise<true> {
    return waitFor(this, 'progress', () => (this.closed ? true : undefined), 'the stream to be closed');
  }
}

/** The largest writableLength any event-stream response had right after a write. */
function watchEventStreamBuffers(): { max: number } {
  const seen = { max: 0 };
  const write = http.ServerResponse.prototype.write;
  const spy = jest.spyOn(http.ServerResponse.prototype, 'write').mockImplementation(function (
    this: http.ServerResponse,
    ...args: Parameters<typeof write>
  ) {
    const written = write.apply(this, args);
    if (this.req.url === '/v1/events') seen.max = Math.max(seen.max, this.writableLength);
    return written;
  });
  cleanups.push(() => spy.mockRestore());
  return seen;
}

it('ends the stream of a client that stops reading once it falls 4 MiB behind; one that reads gets every event', async () => {
  const { daemon, log } = await startDaemon();
  const buffers = watchEventStreamBuffers();
  const slow = await StreamClient.open(daemon.config.socket);
  slow.socket.pause();
  const fast = await StreamClient.open(daemon.config.socket);

  // Events of ~16 KiB each, twice the limit in all, published in rounds the reading client keeps up with.
  const event = (i: number): DaemonEvent => ({ type: 'domain', domain: `vm${i}-${'x'.repeat(16_000)}`, state: 'x' });
  const frameBytes = Buffer.byteLength(daemon.events.frame(event(0)));
  const total = Math.ceil((2 * EVENT_STREAM_MAX_BUFFERED) / frameBytes);
  let published = 0;
  while (published < total) {
    for (let i = 0; i < 16 && published < total; i++) daemon.events.publish(event(published++));
    await fast.untilFrames(published);
  }

  // Never more queued for the stalled client than the limit, plus one frame and its chunk header;
  // and it did fall behind that far (the limit was reached, not just never approached).
  expect(buffers.max).toBeLessThanOrEqual(EVENT_STREAM_MAX_BUFFERED + frameBytes + 16);
  expect(buffers.max).toBeGreaterThan(EVENT_STREAM_MAX_BUFFERED - 2 * frameBytes);
  const cut = await log.next('event stream client is not reading: its stream is ended');
  expect(cut.limit).toBe(EVENT_STREAM_MAX_BUFFERED);
  expect(cut.buffered).toBeLessThanOrEqual(EVENT_STREAM_MAX_BUFFERED);

  // Reading again, the stalled client finds what was sent before the cut, then the end of its stream.
  slow.socket.resume();
  await slow.untilClosed();
  expect(slow.frames).toBeLessThan(total);

  // The reading client still has its stream: it gets the next event as well.
  expect(fast.closed).toBe(false);
  daemon.events.publish(event(total));
  await fast.untilFrames(total + 1);
  expect(fast.frames).toBe(total + 1);
});
