import { DBusConnection } from './dbus';
import { NOTIFICATIONS_INTERFACE, NOTIFICATIONS_NAME, NOTIFICATIONS_PATH } from './notifications';
import { type RunningTray, startTray } from './tray-module';
import { Desktop, cleanUp, sleep, until } from './testing/desktop';
import { FakeDaemon, fakeDevice } from './testing/fake-daemon';

// The notification server is replaced while the tray runs (a desktop restarts its shell, dunst is
// restarted, another server takes over): what the tray knew about the old one no longer holds.
jest.setTimeout(60_000);

/** A minimal org.freedesktop.Notifications server with the given capabilities, counting ids from `firstId`. */
class FakeServer {
  readonly notified: { id: number; appName: string; body: string }[] = [];
  readonly closed: number[] = [];
  private nextId: number;

  private constructor(
    readonly bus: DBusConnection,
    capabilities: string[],
    firstId: number,
  ) {
    this.nextId = firstId;
    bus.export(NOTIFICATIONS_PATH, {
      name: NOTIFICATIONS_INTERFACE,
      methods: {
        GetCapabilities: { in: '', out: 'as', handler: () => [capabilities] },
        Notify: {
          in: 'susssasa{sv}i',
          out: 'u',
          handler: ([appName, replacesId, , , body]) => {
            const id = (replacesId as number) || this.nextId++;
            this.notified.push({ id, appName: appName as string, body: body as string });
            return [id];
          },
        },
        CloseNotification: {
          in: 'u',
          out: '',
          handler: ([id]) => {
            this.closed.push(id as number);
            return [];
          },
        },
      },
      properties: {},
      signals: { ActionInvoked: 'us', NotificationClosed: 'uu' },
    });
  }

  static async start(address: string, capabilities: string[], firstId = 1): Promise<FakeServer> {
    const server = new FakeServer(await DBusConnection.connect(address), capabilities, firstId);
    await server.bus.requestName(NOTIFICATIONS_NAME);
    return server;
  }

  /** What another application's notification looks like to this server: an id of its own. */
  notifyForOther(): number {
    const id = this.nextId++;
    this.notified.push({ id, appName: 'other-app', body: '' });
    return id;
  }

  invoke(id: number, key: string): void {
    this.bus.emitSignal(NOTIFICATIONS_PATH, NOTIFICATIONS_INTERFACE, 'ActionInvoked', 'us', [id, key]);
  }

  ours(): { id: number; body: string }[] {
    return this.notified.filter((n) => n.appName === 'devgate-tray');
  }
}

let desktop: Desktop | undefined;
let fake: FakeDaemon | undefined;
let tray: RunningTray | undefined;
const servers: FakeServer[] = [];

beforeAll(async () => {
  desktop = await Desktop.start({ xvfb: false });
  fake = await FakeDaemon.start();
});

afterAll(() =>
  cleanUp(
    () => tray?.dispose(),
    ...servers.map((s) => () => s.bus.dispose()),
    () => fake?.dispose(),
    () => desktop?.stop(),
  ),
);

describe('a notification server that is replaced', () => {
  it('asks the new server for its capabilities: body markup is escaped for a server that reads it', async () => {
    // First a server that shows bodies as plain text (no body-markup): text goes as is.
    const plainServer = await FakeServer.start(desktop!.busAddress, ['actions', 'body']);
    servers.push(plainServer);
    tray = await startTray({ socket: fake!.socket, busAddress: desktop!.busAddress, trayIcon: false });
    await until('the tray to reach devgated', () => tray!.stream.isConnected);
    fake!.deviceEvent('added', fakeDevice('sdx1', { description: 'USB_Storage: <b>first</b>' }));
    await until('the first notification', () => plainServer.ours().length === 1);
    expect(plainServer.ours()[0].body).toContain('<b>first</b>');

    // It is replaced by one that parses markup (dunst, GNOME Shell, ...).
    plainServer.bus.dispose();
    const markupServer = await FakeServer.start(desktop!.busAddress, ['actions', 'body', 'body-markup']);
    servers.push(markupServer);
    await sleep(100);
    fake!.deviceEvent('added', fakeDevice('sdx2', { description: 'USB_Storage: <b>second</b> <a href="x">' }));
    await until('the second notification', () => markupServer.ours().length === 1);
    expect(markupServer.ours()[0].body).not.toMatch(/<|>/);
    expect(markupServer.ours()[0].body).toContain('&lt;b&gt;second&lt;/b&gt;');
  });

  it("never acts on, nor closes, another application's notification that reuses an old id", async () => {
    const before = servers.at(-1)!;
    before.bus.dispose();
    // The new server counts from 1 again, and another application gets 1 first.
    const server = await FakeServer.start(desktop!.busAddress, ['actions', 'body', 'body-markup']);
    servers.push(server);
    await sleep(100);
    const others = [server.notifyForOther(), server.notifyForOther()];
    fake!.deviceEvent('added', fakeDevice('sdx3'));
    await until('the notification', () => server.ours().length === 1);
    const posts = fake!.requests.filter((r) => r.method === 'POST').length;

    // The user uses the other application's notifications (ids the old servers gave the tray).
    for (const id of others) server.invoke(id, 'attach:work');
    // And the devices the old servers announced go away.
    fake!.deviceEvent('removed', fakeDevice('sdx1'));
    fake!.deviceEvent('removed', fakeDevice('sdx2'));
    await sleep(300);
    await tray!.notifier!.idle();

    expect(fake!.requests.filter((r) => r.method === 'POST')).toHaveLength(posts);
    expect(server.closed.filter((id) => others.includes(id))).toEqual([]);
  });
});
