/**
 * Everything devgate-tray contributes, and the one place that composes it: the event stream from
 * devgated, desktop notifications, and the tray icon with its menu. Each part registers a
 * Disposable; stopping the tray disposes them in reverse order.
 */
import { spawn } from 'node:child_process';
import { type Disposable, DisposableCollection, Errors } from '@devgate/core';
import { DBusConnection } from './dbus.js';
import { DaemonApi, seenDevice } from './daemon-api.js';
import { DaemonStream, type DaemonStreamOptions } from './daemon-stream.js';
import { DeviceNotifier, NOTIFICATIONS_NAME, NotificationsClient } from './notifications.js';
import { ITEM_INTERFACE, ITEM_PATH, MENU_INTERFACE, MENU_PATH, TrayIcon, WATCHER_NAME } from './tray.js';
import { type MenuAction } from './menu-model.js';

/** Owned while the tray runs: one tray per session (the systemd unit's BusName). */
export const TRAY_BUS_NAME = 'org.devgate.Tray';

export class AlreadyRunning extends Error {
  constructor() {
    super(`devgate-tray already runs in this session (${TRAY_BUS_NAME} is taken)`);
  }
}

/** The table of contents: what the tray serves, uses and shows. */
export const TRAY_CONTRIBUTIONS = {
  /** Owned on the session bus. */
  owns: [TRAY_BUS_NAME, 'org.kde.StatusNotifierItem-<pid>-<n>'],
  /** Served on the session bus. */
  serves: [
    { name: 'org.kde.StatusNotifierItem-<pid>-<n>', path: ITEM_PATH, interface: ITEM_INTERFACE },
    { name: 'org.kde.StatusNotifierItem-<pid>-<n>', path: MENU_PATH, interface: MENU_INTERFACE },
  ],
  /** Used on the session bus. */
  uses: [NOTIFICATIONS_NAME, WATCHER_NAME],
  /** Notification categories (org.freedesktop.Notifications hints). */
  notifications: ['device.added', 'device.removed', 'device.error', 'device'],
  /** devgated's API routes it calls. */
  routes: [
    'GET /v1/events',
    'GET /v1/devices?all=true',
    'GET /v1/asks',
    'GET /v1/domains',
    'GET /v1/assignments',
    'GET /v1/health',
    'POST /v1/attach',
    'POST /v1/detach',
    'POST /v1/asks/:id/answer',
  ],
} as const;

export interface StartTrayOptions {
  /** devgated's read-only socket; state changes go to `<socket>.rw`. */
  readonly socket: string;
  /** Default: $DBUS_SESSION_BUS_ADDRESS. */
  readonly busAddress?: string;
  readonly notifications?: boolean;
  readonly trayIcon?: boolean;
  /** The command "Settings…" runs. */
  readonly settingsCommand?: readonly string[];
  readonly maxTargets?: number;
  readonly newMarkMs?: number;
  readonly stream?: DaemonStreamOptions;
  readonly log?: (message: string) => void;
}

export interface RunningTray extends Disposable {
  readonly bus: DBusConnection;
  readonly api: DaemonApi;
  readonly stream: DaemonStream;
  readonly notifier?: DeviceNotifier;
  readonly icon?: TrayIcon;
  /** Resolves when "Quit" is chosen, the bus goes away, or the tray is disposed; with the reason. */
  readonly done: Promise<string>;
}

export const DEFAULT_SETTINGS_COMMAND = ['x-terminal-emulator', '-e', 'devgate', 'list', '--all'] as const;

export async function startTray(options: StartTrayOptions): Promise<RunningTray> {
  const log = options.log ?? (() => undefined);
  const parts = new DisposableCollection();
  let finish: (reason: string) => void = () => undefined;
  const done = new Promise<string>((resolve) => (finish = resolve));

  const bus = await DBusConnection.connect(options.busAddress);
  parts.push(bus);
  // One tray per session: autostart and a systemd user unit may both try.
  if (!(await bus.tryRequestName(TRAY_BUS_NAME))) {
    parts.dispose();
    throw new AlreadyRunning();
  }
  parts.push(bus.onClose((error) => finish(`the session bus went away${error ? `: ${error.message}` : ''}`)));
  try {
    const api = new DaemonApi(options.socket);
    const stream = new DaemonStream(api, options.stream);
    parts.push(stream);
    stream.on((event) => {
      if (event.type === 'connected') log(event.first ? 'connected to devgated' : 'reconnected to devgated');
      if (event.type === 'disconnected') log(`lost devgated: ${event.reason}; reconnecting`);
    });

    let notifier: DeviceNotifier | undefined;
    if (options.notifications !== false) {
      const client = await new NotificationsClient(bus).start();
      parts.push(client);
      notifier = new DeviceNotifier(stream, api, client, { maxTargets: options.maxTargets, log });
      parts.push(notifier);
    }

    const onAction = async (action: MenuAction): Promise<void> => {
      switch (action.kind) {
        // With notifications, a refusal is shown as one; without, it is logged.
        case 'attach':
          if (notifier) return notifier.attach(action.device, action.vm);
          await api.attach(action.device.class, action.vm, seenDevice(action.device));
          return;
        case 'detach':
          if (notifier) return notifier.detach(action.device, action.vm);
          await api.detach(action.device.class, action.vm, seenDevice(action.device));
          return;
        case 'settings':
          return openSettings(options.settingsCommand ?? DEFAULT_SETTINGS_COMMAND, notifier);
        case 'quit':
          return finish('quit');
      }
    };

    let icon: TrayIcon | undefined;
    if (options.trayIcon !== false) {
      icon = new TrayIcon(bus, stream, api, { onAction, newMarkMs: options.newMarkMs, log });
      parts.push(icon);
    }
    stream.start();
    await icon?.start();
    return {
      bus,
      api,
      stream,
      notifier,
      icon,
      done,
      dispose: () => {
        finish('stopped');
        parts.dispose();
      },
    };
  } catch (error) {
    parts.dispose();
    throw error;
  }
}

function openSettings(command: readonly string[], notifier?: DeviceNotifier): Promise<void> {
  return new Promise((resolve) => {
    const child = spawn(command[0], command.slice(1), { detached: true, stdio: 'ignore' });
    child.once('spawn', () => {
      child.unref();
      resolve();
    });
    child.once('error', (error: NodeJS.ErrnoException) => {
      const failure = Errors.traySettingsFailed({
        command: command[0],
        reason: error.code === 'ENOENT' ? 'command not found' : error.message,
      });
      void notifier
        ?.reportFailure({
          verb: 'Opening',
          device: 'the settings',
          code: failure.code,
          message: failure.message,
          hint: failure.hint,
        })
        .then(resolve);
      if (!notifier) resolve();
    });
  });
}
