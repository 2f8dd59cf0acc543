import { DBusConnection, variant } from './dbus';
import { decodeLayout } from './tray';
import { main } from './main';
import { Desktop, cleanUp, until } from './testing/desktop';
import { LabDaemon } from './testing/lab-daemon';
import { TestWatcher } from './testing/status-notifier-watcher';

jest.setTimeout(60_000);

function capture() {
  const io = { out: '', err: '' };
  return { io, sink: { out: (t: string) => (io.out += t), err: (t: string) => (io.err += t) } };
}

describe('devgate-tray command line', () => {
  it('prints its usage, and refuses unknown options with exit code 2', async () => {
    const help = capture();
    expect(await main(['--help'], help.sink, false)).toBe(0);
    expect(help.io.out).toContain('Usage: devgate-tray [options]');
    expect(help.io.out).toContain('--socket <path>');
    const bad = capture();
    expect(await main(['--frobnicate'], bad.sink, false)).toBe(2);
    expect(bad.io.err).toContain("unknown option '--frobnicate'");
    expect(await main(['--max-vms', 'many'], capture().sink, false)).toBe(2);
  });

  it('fails with exit code 1 and a message when there is no session bus', async () => {
    const saved = process.env.DBUS_SESSION_BUS_ADDRESS;
    delete process.env.DBUS_SESSION_BUS_ADDRESS;
    try {
      const run = capture();
      expect(await main(['--socket', '/nonexistent/devgate.sock'], run.sink, false)).toBe(1);
      expect(run.io.err).toContain('devgate-tray: error: no session bus');
    } finally {
      if (saved !== undefined) process.env.DBUS_SESSION_BUS_ADDRESS = saved;
    }
  });

  it('runs against devgated on the session bus until "Quit"', async () => {
    let desktop: Desktop | undefined;
    let lab: LabDaemon | undefined;
    let watcher: TestWatcher | undefined;
    let host: DBusConnection | undefined;
    const saved = process.env.DBUS_SESSION_BUS_ADDRESS;
    try {
      desktop = await Desktop.start();
      lab = await LabDaemon.start([]);
      watcher = await TestWatcher.start(desktop.busAddress);
      host = await DBusConnection.connect(desktop.busAddress);
      process.env.DBUS_SESSION_BUS_ADDRESS = desktop.busAddress;
      const run = capture();
      const exit = main(['--socket', lab.config.socket], run.sink, false);
      const service = await until('the tray item', () => watcher!.items[0]);
      await until('the connection', () => run.io.err.includes('connected to devgated'));
      // A second one (autostart and the systemd unit both) leaves the first alone.
      const second = capture();
      expect(await main(['--socket', lab.config.socket], second.sink, false)).toBe(0);
      expect(second.io.err).toContain('devgate-tray: devgate-tray already runs in this session');
      const reply = await host.call({
        destination: service,
        path: '/MenuBar',
        interface: 'com.canonical.dbusmenu',
        member: 'GetLayout',
        signature: 'iias',
        body: [0, 1, ['label']],
      });
      const quit = decodeLayout(reply.body[1]).children.find((c) => c.properties.label === 'Quit')!;
      await host.call({
        destination: service,
        path: '/MenuBar',
        interface: 'com.canonical.dbusmenu',
        member: 'Event',
        signature: 'isvu',
        body: [quit.id, 'clicked', variant('i', 0), 0],
      });
      expect(await exit).toBe(0);
      expect(run.io.err).toContain(
        `devgate-tray: running (devgated socket ${lab.config.socket}, tray item ${service})`,
      );
      expect(run.io.err).toContain('devgate-tray: stopped (quit)');
    } finally {
      if (saved === undefined) delete process.env.DBUS_SESSION_BUS_ADDRESS;
      else process.env.DBUS_SESSION_BUS_ADDRESS = saved;
      await cleanUp(
        () => host?.dispose(),
        () => watcher?.stop(),
        () => lab?.stop(),
        () => desktop?.stop(),
      );
    }
  });
});
