/**
 * A minimal org.freedesktop.Notifications server for tests, for what dunst cannot be made to do: a
 * chosen set of capabilities (or none it will tell), ids counted from a chosen number, replacement
 * by another server while the tray runs.
 */
import { DBusConnection, DBusError } from '../dbus.js';
import { NOTIFICATIONS_INTERFACE, NOTIFICATIONS_NAME, NOTIFICATIONS_PATH } from '../notifications.js';

export interface ServedNotification {
  readonly id: number;
  readonly appName: string;
  readonly summary: string;
  readonly body: string;
  /** Action keys (the labels are left out). */
  readonly actions: readonly string[];
  readonly expireMs: number;
}

export class TestNotificationServer {
  readonly notified: ServedNotification[] = [];
  readonly closed: number[] = [];
  private nextId: number;

  private constructor(
    readonly bus: DBusConnection,
    /** `unknown`: GetCapabilities fails, while Notify works. */
    capabilities: readonly string[] | 'unknown',
    firstId: number,
  ) {
    this.nextId = firstId;
    bus.export(NOTIFICATIONS_PATH, {
      name: NOTIFICATIONS_INTERFACE,
      methods: {
        GetCapabilities: {
          in: '',
          out: 'as',
          handler: () => {
            if (capabilities === 'unknown') throw new DBusError('org.freedesktop.DBus.Error.Failed', 'not telling');
            return [capabilities];
          },
        },
        Notify: {
          in: 'susssasa{sv}i',
          out: 'u',
          handler: ([appName, replacesId, , summary, body, actions, , expireMs]) => {
            const id = (replacesId as number) || this.nextId++;
            this.notified.push({
              id,
              appName: appName as string,
              summary: summary as string,
              body: body as string,
              actions: (actions as string[]).filter((_, i) => i % 2 === 0),
              expireMs: expireMs as number,
            });
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

  static async start(
    address: string,
    capabilities: readonly string[] | 'unknown',
    firstId = 1,
  ): Promise<TestNotificationServer> {
    const server = new TestNotificationServer(await DBusConnection.connect(address), capabilities, firstId);
    await server.bus.requestName(NOTIFICATIONS_NAME);
    return server;
  }

  /** What another application's notification looks like to this server: an id of its own. */
  notifyForOther(): number {
    const id = this.nextId++;
    this.notified.push({ id, appName: 'other-app', summary: '', body: '', actions: [], expireMs: -1 });
    return id;
  }

  invoke(id: number, key: string): void {
    this.bus.emitSignal(NOTIFICATIONS_PATH, NOTIFICATIONS_INTERFACE, 'ActionInvoked', 'us', [id, key]);
  }

  ours(): ServedNotification[] {
    return this.notified.filter((n) => n.appName === 'devgate-tray');
  }
}
