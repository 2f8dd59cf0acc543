import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ReplaySubject, filter, firstValueFrom, take, toArray } from 'rxjs';
import { socketDirOf } from './socket-watch';
import { type LibvirtEvent, VirshTransport } from './virsh-transport';

// The event stream's reconnection when libvirtd is out of reach. A stand-in virsh connects when a
// socket file exists and fails as virsh does when it does not, so the test decides when libvirtd is there.
jest.setTimeout(20_000);

let dir: string;
let calls: string;
let virsh: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-virsh-'));
  calls = path.join(dir, 'calls');
  virsh = path.join(dir, 'virsh');
  fs.writeFileSync(
    virsh,
    [
      '#!/bin/sh',
      'echo "$*" >> "$FAKE_CALLS"',
      'if [ -e "$FAKE_SOCKET" ]; then echo "$3"; exec sleep 600; fi',
      'echo "error: failed to connect to the hypervisor" >&2',
      `echo "error: Failed to connect socket to '$FAKE_SOCKET': No such file or directory" >&2`,
      'exit 1',
    ].join('\n') + '\n',
    { mode: 0o755 },
  );
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function follow(uri: string, socket: string, respawnMs: number) {
  const transport = new VirshTransport(uri, {
    virsh,
    env: { ...process.env, FAKE_CALLS: calls, FAKE_SOCKET: socket },
    respawnMs,
  });
  const events = new ReplaySubject<LibvirtEvent>();
  const subscription = transport.events$.subscribe(events);
  const nth = (kind: LibvirtEvent['kind'], n = 1) =>
    firstValueFrom(
      events.pipe(
        filter((e) => e.kind === kind),
        take(n),
        toArray(),
      ),
    );
  const dispose = () => {
    subscription.unsubscribe();
    transport.dispose();
  };
  return { nth, dispose };
}

const callCount = () => fs.readFileSync(calls, 'utf8').trim().split('\n').length;

it('tries a local libvirtd out of reach again when its socket appears, not on a timer', async () => {
  // The socket's directory does not exist yet either: the watch follows the way to it.
  const socket = path.join(dir, 'run', 'libvirt', 'libvirt-sock');
  // A first back-off longer than the test: only the watch can bring the connection.
  const stream = follow(`qemu:///system?socket=${socket}`, socket, 60_000);
  try {
    await stream.nth('disconnected');
    fs.mkdirSync(path.dirname(socket), { recursive: true });
    fs.writeFileSync(socket, '');
    await stream.nth('connected');
    expect(callCount()).toBe(2);
  } finally {
    stream.dispose();
  }
});

it('backs off on a timer where there is no socket to watch (a remote URI)', async () => {
  const stream = follow('qemu+ssh://nowhere.invalid/system', path.join(dir, 'absent'), 1);
  try {
    await stream.nth('disconnected', 3);
    expect(callCount()).toBeGreaterThanOrEqual(3);
  } finally {
    stream.dispose();
  }
});

describe('socketDirOf', () => {
  it.each([
    ['qemu:///system', '/run/libvirt'],
    ['qemu+unix:///system', '/run/libvirt'],
    ['qemu:///session', '/run/user/1000/libvirt'],
    ['qemu:///system?socket=/tmp/lv/sock', '/tmp/lv'],
    ['qemu+ssh://host/system', undefined],
    ['qemu+tcp://host/system', undefined],
    ['test:///default', undefined],
    ['qemu:///system?socket=relative/sock', undefined],
    ['not a uri', undefined],
  ])('%s -> %s', (uri, expected) => {
    expect(socketDirOf(uri, { XDG_RUNTIME_DIR: '/run/user/1000' })).toBe(expected);
  });

  it('puts a session socket under ~/.cache without XDG_RUNTIME_DIR, as libvirt does', () => {
    expect(socketDirOf('qemu:///session', { HOME: '/home/u' })).toBe('/home/u/.cache/libvirt');
  });
});
