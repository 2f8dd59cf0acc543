import { type RunningTray, startTray } from './tray-module';
import { Desktop, cleanUp, sleep, until } from './testing/desktop';
import { FakeDaemon, fakeDevice } from './testing/fake-daemon';
import { TestNotificationServer } from './testing/notification-server';

// The notification server is replaced while the tray runs (a desktop restarts its shell, dunst is
// restarted, another server takes over): what the tray knew about the old one no longer holds.
jest.setTimeout(60_000);

let desktop: Desktop | undefined;
let fake: FakeDaemon | undefined;
let tray: RunningTray | undefined;
const servers: TestNotificationServer[] = [];

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
    const plainServer = await TestNotificationServer.start(desktop!.busAddress, ['actions', 'body']);
    servers.push(plainServer);
    tray = await startTray({ socket: fake!.socket, busAddress: desktop!.busAddress, trayIcon: false });
    await until('the tray to reach devgated', () => tray!.stream.isConnected);
    fake!.deviceEvent('added', fakeDevice('sdx1', { description: 'USB_Storage: <b>first</b>' }));
    await until('the first notification', () => plainServer.ours().length === 1);
    expect(plainServer.ours()[0].body).toContain('<b>first</b>');

    // It is replaced by one that parses markup (dunst, GNOME Shell, ...).
    plainServer.bus.dispose();
    const markupServer = await TestNotificationServer.start(desktop!.busAddress, ['actions', 'body', 'body-markup']);
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
    const server = await TestNotificationServer.start(desktop!.busAddress, ['actions', 'body', 'body-markup']);
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

  it('keeps a body free of markup for a server that does not tell its capabilities', async () => {
    servers.at(-1)!.bus.dispose();
    const server = await TestNotificationServer.start(desktop!.busAddress, 'unknown');
    servers.push(server);
    await sleep(100);
    fake!.deviceEvent('added', fakeDevice('sdx4', { description: 'USB_Storage: <b>fourth</b> & <a href="x">' }));
    await until('the notification', () => server.ours().length === 1);
    expect(server.ours()[0].body).not.toMatch(/[<>&]/);
    expect(server.ours()[0].body).toContain('bfourth/b');
  });

  it('shows an unanswered ask again on the server that replaces the one that showed it', async () => {
    servers.at(-1)!.bus.dispose();
    const first = await TestNotificationServer.start(desktop!.busAddress, ['actions', 'body']);
    servers.push(first);
    await sleep(100);
    const ask = (id: string, expiresInMs: number) => ({
      id,
      devclass: 'block',
      device: 'dom0:sdx5',
      deviceId: fakeDevice('sdx5').deviceId,
      description: 'USB_Storage: SanDisk Cruzer (sdx5)',
      candidates: ['work'],
      reason: 'assigned to work (ask-to-attach)',
      createdAt: new Date().toISOString(),
      expiresAt: new Date(Date.now() + expiresInMs).toISOString(),
      rememberable: true,
    });
    const open = ask('still-open', 60_000);
    const expiring = ask('expiring', 500);
    fake!.asks = [open, expiring];
    for (const pending of fake!.asks) fake!.send('ask', { ask: pending });
    await until('both asks', () => first.ours().filter((n) => n.summary === 'Attach device to work?').length === 2);

    first.bus.dispose();
    await sleep(600); // the second ask's time is up meanwhile
    const second = await TestNotificationServer.start(desktop!.busAddress, ['actions', 'body'], 1);
    servers.push(second);
    const [shown] = await until('the ask again', () => second.ours().length > 0 && second.ours());
    await sleep(200);
    await tray!.notifier!.idle();
    expect(second.ours()).toHaveLength(1);
    expect(shown).toMatchObject({
      summary: 'Attach device to work?',
      actions: ['allow', 'deny', 'always-allow', 'always-deny'],
    });

    // And answering it there answers devgated.
    second.invoke(shown.id, 'allow');
    const answer = await until('the answer', () =>
      fake!.requests.find((r) => r.route === '/v1/asks/still-open/answer'),
    );
    expect(answer.body).toEqual({ verdict: 'allow', frontend: 'work' });
  });
});
