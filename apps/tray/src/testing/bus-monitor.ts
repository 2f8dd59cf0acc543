/**
 * Watches every Notify call on a test bus (org.freedesktop.DBus.Monitoring.BecomeMonitor), with the
 * id the server returned: what the tray really sent, hints included, matched to dunst's ids.
 */
import { plain } from '../dbus.js';
import {
  type DBusMessage,
  type NativeConnection,
  MessageType,
  createConnection,
  endConnection,
} from '../dbus-native-api.js';

export interface SeenNotification {
  readonly id: number;
  readonly appName: string;
  readonly replacesId: number;
  readonly icon: string;
  readonly summary: string;
  readonly body: string;
  /** `[key, label]` pairs. */
  readonly actions: [string, string][];
  readonly hints: Record<string, unknown>;
  readonly expireMs: number;
}

/** The serials of our own two calls; a monitor sends nothing after them. */
const HELLO = 1;
const BECOME_MONITOR = 2;

export class NotifyMonitor {
  readonly seen: SeenNotification[] = [];
  private readonly calls = new Map<string, DBusMessage>();

  private constructor(private readonly connection: NativeConnection) {}

  /**
   * A raw connection (DBusConnection would answer the calls it sees, and a monitor may not send):
   * Hello, then BecomeMonitor; after its answer, every message that arrives is one being watched.
   */
  static async start(busAddress: string): Promise<NotifyMonitor> {
    const connection = createConnection(busAddress);
    const monitor = new NotifyMonitor(connection);
    const bus = { destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus' };
    try {
      await new Promise<void>((resolve, reject) => {
        let monitoring = false;
        connection.on('error', (error: Error) => {
          if (!monitoring) reject(error);
        });
        connection.on('message', (m: DBusMessage) => {
          if (monitoring) return monitor.onMessage(m);
          if (m.replySerial !== BECOME_MONITOR) return;
          if (m.type !== MessageType.METHOD_RETURN)
            return reject(new Error(JSON.stringify({ name: m.errorName, message: m.body?.[0] })));
          monitoring = true;
          resolve();
        });
        connection.message({
          ...bus,
          type: MessageType.METHOD_CALL,
          serial: HELLO,
          interface: 'org.freedesktop.DBus',
          member: 'Hello',
        });
        connection.message({
          ...bus,
          type: MessageType.METHOD_CALL,
          serial: BECOME_MONITOR,
          interface: 'org.freedesktop.DBus.Monitoring',
          member: 'BecomeMonitor',
          signature: 'asu',
          body: [
            ["type='method_call',interface='org.freedesktop.Notifications',member='Notify'", "type='method_return'"],
            0,
          ],
        });
      });
    } catch (error) {
      monitor.stop();
      throw error;
    }
    return monitor;
  }

  private onMessage(message: DBusMessage): void {
    if (message.type === MessageType.METHOD_CALL && message.member === 'Notify') {
      this.calls.set(`${message.sender}/${message.serial}`, message);
    } else if (message.type === MessageType.METHOD_RETURN) {
      const call = this.calls.get(`${message.destination}/${message.replySerial}`);
      if (!call) return;
      this.calls.delete(`${message.destination}/${message.replySerial}`);
      const [appName, replacesId, icon, summary, body, actions, hints, expireMs] = call.body as [
        string,
        number,
        string,
        string,
        string,
        string[],
        unknown,
        number,
      ];
      const pairs: [string, string][] = [];
      for (let i = 0; i + 1 < actions.length; i += 2) pairs.push([actions[i], actions[i + 1]]);
      this.seen.push({
        id: (message.body ?? [])[0] as number,
        appName,
        replacesId,
        icon,
        summary,
        body,
        actions: pairs,
        hints: plain('a{sv}', hints) as Record<string, unknown>,
        expireMs,
      });
    }
  }

  stop(): void {
    endConnection(this.connection);
  }
}
