import { type RunningTray, startTray } from './tray-module';
import { Desktop, cleanUp, until } from './testing/desktop';
import { NotifyMonitor } from './testing/bus-monitor';
import { FakeDaemon, fakeDevice } from './testing/fake-daemon';

// Many devices at once, against a real dunst: a stand-in devgated sends them (no loop devices).
jest.setTimeout(90_000);

let desktop: Desktop | undefined;
let monitor: NotifyMonitor | undefined;
let fake: FakeDaemon | undefined;
let tray: RunningTray | undefined;

beforeAll(async () => {
  desktop = await Desktop.start();
  monitor = await NotifyMonitor.start(desktop.busAddress);
  fake = await FakeDaemon.start();
  tray = await startTray({ socket: fake.socket, busAddress: desktop.busAddress, trayIcon: false });
  await until('the tray to reach devgated', () => tray!.stream.isConnected);
});

afterAll(() =>
  cleanUp(
    () => tray?.dispose(),
    () => monitor?.stop(),
    () => fake?.dispose(),
    () => desktop?.stop(),
  ),
);

describe('a burst of devices (a hub, a disk with many partitions)', () => {
  const ports = Array.from({ length: 256 }, (_, i) => `hub${i}`);

  it('shows 256 new devices as one notification, and an ask right after them at once', async () => {
    const start = monitor!.seen.length;
    for (const port of ports) fake!.deviceEvent('added', fakeDevice(port));
    const ask = {
      id: 'burst-ask',
      devclass: 'block',
      device: 'dom0:hub7',
      deviceId: fakeDevice('hub7').deviceId,
      description: 'USB_Storage: SanDisk Cruzer (hub7)',
      candidates: ['work'],
      reason: 'assigned to work (ask-to-attach)',
      createdAt: new Date().toISOString(),
      expiresAt: new Date(Date.now() + 60_000).toISOString(),
      rememberable: true,
    };
    fake!.asks = [ask];
    fake!.send('ask', { ask });
    // The question is not kept waiting behind the devices (it would be denied by its timeout).
    await until('the ask on screen', () => monitor!.seen.find((n) => n.hints.category === 'device'), 5000);
    const added = () => monitor!.seen.slice(start).filter((n) => n.hints.category === 'device.added');
    await until('all of them', () => added().at(-1)?.body.startsWith('256 devices'));
    await tray!.notifier!.idle();

    const sent = added();
    expect(sent.filter((n) => n.summary === 'Device available')).toEqual([]);
    expect(new Set(sent.map((n) => n.id)).size).toBe(1);
    expect(sent.length).toBeLessThanOrEqual(4);
    const last = sent.at(-1)!;
    expect(last).toMatchObject({ summary: 'Devices available', actions: [] });
    expect(last.body).toBe(
      '256 devices are available:\n' +
        'USB_Storage: SanDisk Cruzer (hub0) (4.0 GiB) (dom0:hub0)\n' +
        'USB_Storage: SanDisk Cruzer (hub1) (4.0 GiB) (dom0:hub1)\n' +
        'USB_Storage: SanDisk Cruzer (hub2) (4.0 GiB) (dom0:hub2)\n' +
        'and 253 more.\n' +
        'Attach them from the devgate tray menu or with devgate attach.',
    );
    expect(Number(await desktop!.dunstctl('count', 'displayed'))).toBeLessThanOrEqual(2);
  });

  it('reports 256 removals as one notification', async () => {
    const start = monitor!.seen.length;
    for (const port of ports) fake!.deviceEvent('removed', fakeDevice(port));
    await until('all of them', () => monitor!.seen.slice(start).at(-1)?.body.startsWith('256 devices'));
    await tray!.notifier!.idle();
    const sent = monitor!.seen.slice(start);
    expect(sent.filter((n) => n.summary === 'Device removed')).toEqual([]);
    expect(sent.length).toBeLessThanOrEqual(4);
    expect(sent.at(-1)).toMatchObject({ summary: 'Devices removed', hints: { category: 'device.removed' } });
    expect(sent.at(-1)!.body).toMatch(/^256 devices have been removed:\n/);
  });

  it('still gives a single device its own notification with its actions', async () => {
    const start = monitor!.seen.length;
    fake!.deviceEvent('added', fakeDevice('single1'));
    const [seen] = await until('the notification', () => {
      const list = monitor!.seen.slice(start).filter((n) => n.summary === 'Device available');
      return list.length > 0 && list;
    });
    expect(seen.actions.map(([key]) => key)).toEqual(['attach:work', 'attach:personal', 'ignore']);
  });
});
