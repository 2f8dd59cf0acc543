import { createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { DBusConnection, plain, variant } from './dbus';
import { type LayoutNode, ITEM_INTERFACE, MENU_INTERFACE, decodeLayout } from './tray';
import { type RunningTray, startTray } from './tray-module';
import { listedDevices } from './menu-model';
import { categoryLabel } from './notification-text';
import { Desktop, cleanUp, until } from './testing/desktop';
import { LabDaemon } from './testing/lab-daemon';
import { TestWatcher } from './testing/status-notifier-watcher';

// The tray icon as a panel sees it: a StatusNotifierWatcher on a real session bus, the item's
// properties, and its com.canonical.dbusmenu menu, fed by devgated with this host's devices.
jest.setTimeout(90_000);

let desktop: Desktop | undefined;
let lab: LabDaemon | undefined;
let tray: RunningTray | undefined;
let watcher: TestWatcher | undefined;
let host: DBusConnection | undefined;
const layoutUpdates: number[] = [];

beforeAll(async () => {
  desktop = await Desktop.start({ xvfb: false });
  lab = await LabDaemon.start(['work']);
  tray = await startTray({ socket: lab.config.socket, busAddress: desktop.busAddress, notifications: false });
  host = await DBusConnection.connect(desktop.busAddress);
  await host.onSignal({ interface: MENU_INTERFACE, member: 'LayoutUpdated' }, (body) =>
    layoutUpdates.push(body[0] as number),
  );
});

afterAll(() =>
  cleanUp(
    () => tray?.dispose(),
    () => watcher?.stop(),
    () => host?.dispose(),
    () => lab?.stop(),
    () => disposeAllLoopDisks(),
    () => desktop?.stop(),
  ),
);

async function itemProperties(service: string): Promise<Record<string, unknown>> {
  const reply = await host!.call({
    destination: service,
    path: '/StatusNotifierItem',
    interface: 'org.freedesktop.DBus.Properties',
    member: 'GetAll',
    signature: 's',
    body: [ITEM_INTERFACE],
  });
  return plain('a{sv}', reply.body[0]) as Record<string, unknown>;
}

async function layout(service: string, menu: string): Promise<{ revision: number; root: LayoutNode }> {
  const reply = await host!.call({
    destination: service,
    path: menu,
    interface: MENU_INTERFACE,
    member: 'GetLayout',
    signature: 'iias',
    body: [0, -1, []],
  });
  return { revision: reply.body[0] as number, root: decodeLayout(reply.body[1]) };
}

/** Device entries: the port from each submenu's header line, with the entry and its submenu labels. */
function deviceEntries(root: LayoutNode): Map<string, { label: string; actions: string[]; node: LayoutNode }> {
  const entries = new Map<string, { label: string; actions: string[]; node: LayoutNode }>();
  for (const node of root.children) {
    const header = node.children[0]?.properties.label;
    // dbusmenu labels double an underscore (a single one marks a mnemonic): PCI ports have them.
    const port = typeof header === 'string' ? /^(\S+) → /.exec(header)?.[1]?.replaceAll('__', '_') : undefined;
    if (!port) continue;
    entries.set(port, {
      label: String(node.properties.label),
      actions: node.children
        .filter((c) => c.properties.enabled !== false && c.properties.label)
        .map((c) => String(c.properties.label)),
      node,
    });
  }
  return entries;
}

const click = (service: string, menu: string, id: number) =>
  host!.call({
    destination: service,
    path: menu,
    interface: MENU_INTERFACE,
    member: 'Event',
    signature: 'isvu',
    body: [id, 'clicked', variant('i', 0), 0],
  });

describe('tray icon (StatusNotifierItem + dbusmenu on a session bus)', () => {
  it('registers with a StatusNotifierWatcher that starts after it, as a Hardware item with a menu', async () => {
    watcher = await TestWatcher.start(desktop!.busAddress);
    const service = tray!.icon!.service;
    await until('the registration', () => watcher!.items.includes(service));
    const properties = await itemProperties(service);
    expect(properties).toMatchObject({
      Category: 'Hardware',
      Id: 'devgate-tray',
      Status: 'Active',
      ItemIsMenu: true,
      Menu: '/MenuBar',
      IconName: 'drive-removable-media',
    });
  });

  it('lists the devices devgated lists, grouped by category, with Settings… and Quit', async () => {
    const service = watcher!.items[0];
    const { Menu: menu } = await itemProperties(service);
    const { root } = await until('the menu to show what devgated lists', async () => {
      const current = await layout(service, menu as string);
      const listed = listedDevices(await lab!.api.devices()).map((d) => d.port);
      const shown = [...deviceEntries(current.root).keys()];
      const reachable = current.root.children[0]?.properties.label !== 'devgated is not reachable';
      return reachable && shown.sort().join() === listed.sort().join() && current;
    });
    const labels = root.children.map((c) => c.properties.label ?? c.properties.type);
    if (deviceEntries(root).size === 0) expect(labels[0]).toBe('No devices');
    for (const group of new Set(listedDevices(await lab!.api.devices()).map((d) => categoryLabel(d)))) {
      expect(labels).toContain(group);
    }
    expect(labels.slice(-3)).toEqual(['separator', 'Settings…', 'Quit']);
  });

  it('adds a new loop device with a NEW mark (LayoutUpdated), attaches and detaches it from the menu, drops it when it goes', async () => {
    const service = watcher!.items[0];
    const before = layoutUpdates.length;
    const disk = createLoopDisk({ sizeMiB: 8 });
    const port = `dom0:${disk.name}`;
    await until('LayoutUpdated', () => layoutUpdates.length > before);
    const entry = await until('the device in the menu', async () => {
      const e = deviceEntries((await layout(service, '/MenuBar')).root).get(port);
      return e?.label.includes(disk.image) && e;
    });
    expect(entry.label).toBe(`NEW  Block__Storage: hosted by dom0 ${disk.image} (8.0 MiB)`);
    expect(entry.node.properties).toMatchObject({ 'icon-name': 'drive-harddisk', 'children-display': 'submenu' });
    expect(entry.actions).toEqual(['Attach to work']);

    const attach = entry.node.children.find((c) => c.properties.label === 'Attach to work')!;
    await click(service, '/MenuBar', attach.id);
    await until('the attachment', async () =>
      (await lab!.api.devices()).some((d) => d.port === port && d.attachment?.frontend === 'work'),
    );
    const attached = await until('the menu to show it attached', async () => {
      const e = deviceEntries((await layout(service, '/MenuBar')).root).get(port);
      return e?.actions[0] === 'Detach from work' && e;
    });
    expect(attached.node.children[0].properties.label).toBe(`${port} → work`);

    const detach = attached.node.children.find((c) => c.properties.label === 'Detach from work')!;
    await click(service, '/MenuBar', detach.id);
    await until('the detachment', async () =>
      (await lab!.api.devices()).some((d) => d.port === port && d.attachment === null),
    );

    const beforeRemoval = layoutUpdates.length;
    disk.dispose();
    await until('LayoutUpdated', () => layoutUpdates.length > beforeRemoval);
    await until(
      'the device to leave the menu',
      async () => !deviceEntries((await layout(service, '/MenuBar')).root).has(port),
    );
  });

  it('quits from the menu', async () => {
    const service = watcher!.items[0];
    const { root } = await layout(service, '/MenuBar');
    const quit = root.children.find((c) => c.properties.label === 'Quit')!;
    await click(service, '/MenuBar', quit.id);
    await expect(tray!.done).resolves.toBe('quit');
  });
});
