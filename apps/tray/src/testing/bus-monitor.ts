/**
 * Watches every Notify call on a test bus (org.freedesktop.DBus.Monitoring.BecomeMonitor), with the
 * id the server returned: what the tray really sent, hints included, matched to dunst's ids.
 */
import { type EventEmitter } from 'node:events';
import * as dbusNative from '@homebridge/dbus-native';
import { type DBusMessage, plain } from '../dbus.js';

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

interface RawBus {
  connection: EventEmitter & { end(): void };
  invoke(message: DBusMessage, callback: (error: unknown) => void): void;
}

export class NotifyMonitor {
  readonly seen: SeenNotification[] = [];
  private readonly calls = new Map<string, DBusMessage>();

  private constructor(private readonly bus: RawBus) {}

  static async start(busAddress: string): Promise<NotifyMonitor> {
    const bus = (dbusNative as unknown as { createClient(o: { busAddress: string }): RawBus }).createClient({
      busAddress,
    });
    const monitor = new NotifyMonitor(bus);
    await new Promise<void>((resolve, reject) => {
      bus.connection.once('error', reject);
      bus.invoke(
        {
          destination: 'org.freedesktop.DBus',
          path: '/org/freedesktop/DBus',
          interface: 'org.freedesktop.DBus.Monitoring',
          member: 'BecomeMonitor',
          signature: 'asu',
          body: [
            ["type='method_call',interface='org.freedesktop.Notifications',member='Notify'", "type='method_return'"],
            0,
          ],
        },
        (error) => (error ? reject(new Error(JSON.stringify(error))) : resolve()),
      );
    });
    // A monitor only listens: the library's handler would answer the calls it sees, so it goes.
    bus.connection.removeAllListeners('message');
    bus.connection.on('message', (m: DBusMessage) => monitor.onMessage(m));
    bus.connection.on('error', () => undefined);
    return monitor;
  }

  private onMessage(message: DBusMessage): void {
    if (message.type === 1 && message.member === 'Notify') {
      this.calls.set(`${message.sender}/${message.serial}`, message);
    } else if (message.type === 2) {
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
    try {
      this.bus.connection.end();
    } catch {
      // gone already
    }
  }
}
