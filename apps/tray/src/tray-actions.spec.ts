import { DBusConnection, variant } from './dbus';
import { MENU_INTERFACE, MENU_PATH, type LayoutNode, decodeLayout } from './tray';
import { type RunningTray, startTray } from './tray-module';
import { DaemonApi } from './daemon-api';
import { DaemonStream } from './daemon-stream';
import { DeviceNotifier, NotificationsClient } from './notifications';
import { Desktop, cleanUp, sleep, until } from './testing/desktop';
import { FakeDaemon, fakeDevice } from './testing/fake-daemon';
import { TestNotificationServer } from './testing/notification-server';

// What the tray does when the user acts (menu, notification), and what it then says, against a
// stand-in devgated and a notification server on a real session bus.
jest.setTimeout(60_000);

let desktop: Desktop | undefined;
let fake: FakeDaemon | undefined;
let server: TestNotificationServer | undefined;
let host: DBusConnection | undefined;
let tray: RunningTray | undefined;

beforeAll(async () => {
  desktop = await Desktop.start({ xvfb: false });
  fake = await FakeDaemon.start();
  server = await TestNotificationServer.start(desktop.busAddress, ['actions', 'body']);
  host = await DBusConnection.connect(desktop.busAddress);
});

afterAll(() =>
  cleanUp(
    () => tray?.dispose(),
    () => host?.dispose(),
    () => server?.bus.dispose(),
    () => fake?.dispose(),
    () => desktop?.stop(),
  ),
);

async function menu(): Promise<LayoutNode> {
  const reply = await host!.call({
    destination: tray!.icon!.service,
    path: MENU_PATH,
    interface: MENU_INTERFACE,
    member: 'GetLayout',
    signature: 'iias',
    body: [0, -1, []],
  });
  return decodeLayout(reply.body[1]);
}

function findItem(node: LayoutNode, label: string): LayoutNode | undefined {
  if (node.properties.label === label) return node;
  for (const child of node.children) {
    const found = findItem(child, label);
    if (found) return found;
  }
  return undefined;
}

const click = (id: number) =>
  host!.call({
    destination: tray!.icon!.service,
    path: MENU_PATH,
    interface: MENU_INTERFACE,
    member: 'Event',
    signature: 'isvu',
    body: [id, 'clicked', variant('i', 0), 0],
  });

const restart = async (options: { notifications: boolean; settingsCommand?: string[] }) => {
  tray?.dispose();
  tray = await startTray({ socket: fake!.socket, busAddress: desktop!.busAddress, ...options });
  await until('the tray to reach devgated', () => tray!.stream.isConnected);
};

/** Our notifications after the first `count`, once there are any. */
const shownSince = (count: number) => server!.ours().length > count && server!.ours().slice(count);

const attachedToWork = { frontend: 'work', options: {} };

describe('"Detach from <vm>" in a menu that is out of date', () => {
  // The menu shows one stick in dom0:sdx1 attached to work; meanwhile it was unplugged and another
  // stick took the port, also attached to work, before the tray heard of it.
  const shown = fakeDevice('sdx1', { attachment: attachedToWork });
  const other = fakeDevice('sdx1', { deviceId: '0951:1666:OTHER:u080650:1', attachment: attachedToWork });

  for (const notifications of [true, false]) {
    it(`names the device the user saw, so devgated refuses to detach another (notifications ${notifications ? 'on' : 'off'})`, async () => {
      fake!.devices = [shown];
      await restart({ notifications });
      const detach = await until('the menu item', async () => findItem(await menu(), 'Detach from work'));
      fake!.devices = [other];
      const before = server!.ours().length;

      await click(detach.id);
      const request = await until('the detach', () => fake!.requests.find((r) => r.route === '/v1/detach'));
      fake!.requests.length = 0;

      expect(request.body).toEqual({ class: 'block', frontend: 'work', device: `dom0:sdx1:${shown.deviceId}` });
      if (notifications) {
        const [failure] = await until('the refusal', () => shownSince(before));
        expect(failure.summary).toBe('Detaching device failed');
        expect(failure.body).toContain('Error: DG_NOT_ATTACHED');
      }
    });
  }
});

describe('error codes the tray shows', () => {
  it('"Settings…" whose command is missing: a coded error with a hint', async () => {
    fake!.devices = [];
    await restart({ notifications: true, settingsCommand: ['/nonexistent/devgate-settings'] });
    const before = server!.ours().length;
    await click(findItem(await menu(), 'Settings…')!.id);
    const [failure] = await until('the failure', () => shownSince(before));
    expect(failure.summary).toBe('Opening settings failed');
    expect(failure.body).toBe(
      'Opening the settings failed.\n' +
        'Error: DG_TRAY_SETTINGS - /nonexistent/devgate-settings: command not found\n' +
        'Hint: choose the command with devgate-tray --settings-command',
    );
  });

  it('a failure that is not a devgate error is DG_INTERNAL, as devgated codes it', async () => {
    const api = new DaemonApi(fake!.socket);
    api.attach = () => Promise.reject(new TypeError("Cannot read properties of null (reading 'device')"));
    const client = await new NotificationsClient(await DBusConnection.connect(desktop!.busAddress)).start();
    const notifier = new DeviceNotifier(new DaemonStream(api), api, client);
    const before = server!.ours().length;
    await notifier.attach(fakeDevice('sdx2'), 'work');
    await notifier.idle();
    const [failure] = server!.ours().slice(before);
    expect(failure.body).toContain("Error: DG_INTERNAL - Cannot read properties of null (reading 'device')");
  });

  it("devgated's own failure without a code is DG_INTERNAL", async () => {
    await restart({ notifications: true });
    const before = server!.ours().length;
    fake!.send('audit', {
      entry: {
        id: 1,
        at: new Date().toISOString(),
        actor: 'devgated (auto-attach)',
        action: 'auto-attach',
        outcome: 'error',
      },
    });
    const [failure] = await until('the failure', () => shownSince(before));
    expect(failure.body).toBe('Attaching a device failed.\nError: DG_INTERNAL - failed');
  });
});

describe('an ask devgated no longer waits for', () => {
  const ask = (id: string, expiresAt: string) => ({
    id,
    devclass: 'block',
    device: 'dom0:sdx3',
    deviceId: fakeDevice('sdx3').deviceId,
    description: 'USB_Storage: SanDisk Cruzer (sdx3)',
    candidates: ['work'],
    reason: 'assigned to work (ask-to-attach)',
    createdAt: new Date(Date.now() - 120_000).toISOString(),
    expiresAt,
    rememberable: true,
  });

  it('is not shown when its time is up or its expiry is unreadable; one still open is', async () => {
    await restart({ notifications: true });
    const before = server!.ours().length;
    for (const late of [ask('past', new Date(Date.now() - 1000).toISOString()), ask('garbled', 'soon')]) {
      fake!.send('ask', { ask: late });
    }
    fake!.send('ask', { ask: ask('open', new Date(Date.now() + 60_000).toISOString()) });
    await until('the open ask', () => server!.ours().slice(before).length > 0);
    await sleep(200);
    await tray!.notifier!.idle();

    const shown = server!.ours().slice(before);
    expect(shown).toHaveLength(1);
    expect(shown[0].body).toMatch(/Denied automatically in (59|60) s\./);
    expect(shown[0].expireMs).toBeGreaterThan(58_000);
  });
});
