/**
 * A minimal org.kde.StatusNotifierWatcher for tests: it records which items register, as a panel's
 * watcher (KDE Plasma, waybar, the GNOME AppIndicator extension) would.
 */
import { DBusConnection } from '../dbus.js';

export class TestWatcher {
  /** Registered service names, as the items sent them. */
  readonly items: string[] = [];

  private constructor(readonly bus: DBusConnection) {}

  static async start(busAddress: string): Promise<TestWatcher> {
    const bus = await DBusConnection.connect(busAddress);
    const watcher = new TestWatcher(bus);
    bus.export('/StatusNotifierWatcher', {
      name: 'org.kde.StatusNotifierWatcher',
      methods: {
        RegisterStatusNotifierItem: {
          in: 's',
          out: '',
          handler: ([service], call) => {
            // An item may send its bus name or an object path on its connection.
            const name = typeof service === 'string' && !service.startsWith('/') ? service : call.sender!;
            if (!watcher.items.includes(name)) watcher.items.push(name);
            bus.emitSignal(
              '/StatusNotifierWatcher',
              'org.kde.StatusNotifierWatcher',
              'StatusNotifierItemRegistered',
              's',
              [name],
            );
            return [];
          },
        },
        RegisterStatusNotifierHost: { in: 's', out: '', handler: () => [] },
      },
      properties: {
        RegisteredStatusNotifierItems: { signature: 'as', get: () => watcher.items },
        IsStatusNotifierHostRegistered: { signature: 'b', get: () => true },
        ProtocolVersion: { signature: 'i', get: () => 0 },
      },
      signals: {
        StatusNotifierItemRegistered: 's',
        StatusNotifierItemUnregistered: 's',
        StatusNotifierHostRegistered: '',
      },
    });
    await bus.requestName('org.kde.StatusNotifierWatcher');
    return watcher;
  }

  stop(): void {
    this.bus.dispose();
  }
}
