/**
 * Desktop notifications (org.freedesktop.Notifications 1.2+, over the session bus): a device is
 * available (with "Attach to <vm>"), removed, an attach or detach failed, devgated asks. Invoking
 * an action (the server's ActionInvoked signal) calls devgated's API.
 */
import { type DeviceJson, type Disposable, DisposableCollection } from '@devgate/core';
import { type DBusConnection, type Variant, variant } from './dbus.js';
import { ApiError, type AskJson, type AuditJson, type DaemonApi } from './daemon-api.js';
import { type DaemonStream, type TrayEvent, deviceKey } from './daemon-stream.js';
import { type DomainsView, attachTargets } from './attach-targets.js';
import {
  APP_NAME,
  AskAction,
  type FailureText,
  type NotificationSpec,
  askNotification,
  deviceAddedNotification,
  deviceRemovedNotification,
  deviceTitle,
  failureNotification,
  iconFor,
} from './notification-text.js';

export const NOTIFICATIONS_NAME = 'org.freedesktop.Notifications';
export const NOTIFICATIONS_PATH = '/org/freedesktop/Notifications';
export const NOTIFICATIONS_INTERFACE = 'org.freedesktop.Notifications';

export type ActionHandler = (key: string) => void | Promise<void>;

/** The client side of org.freedesktop.Notifications. */
export class NotificationsClient implements Disposable {
  private readonly handlers = new Map<number, ActionHandler>();
  private readonly subscriptions = new DisposableCollection();
  private capabilities?: Set<string>;
  /** Unique names that answered our Notify calls: the only senders whose signals we trust. */
  private readonly servers = new Set<string>();

  constructor(private readonly bus: DBusConnection) {}

  async start(): Promise<this> {
    const filter = { interface: NOTIFICATIONS_INTERFACE, path: NOTIFICATIONS_PATH };
    this.subscriptions.push(
      await this.bus.onSignal({ ...filter, member: 'ActionInvoked' }, (body, message) => {
        const [id, key] = body as [number, string];
        if (!this.servers.has(message.sender ?? '')) return;
        const handler = this.handlers.get(id);
        if (handler && typeof key === 'string') void Promise.resolve(handler(key)).catch(() => undefined);
      }),
      await this.bus.onSignal({ ...filter, member: 'NotificationClosed' }, (body, message) => {
        if (this.servers.has(message.sender ?? '')) this.handlers.delete(body[0] as number);
      }),
    );
    return this;
  }

  /** The server's capabilities (`actions`, `body-markup`, ...), read once. */
  async serverCapabilities(): Promise<Set<string>> {
    if (!this.capabilities) {
      try {
        const reply = await this.bus.call({
          destination: NOTIFICATIONS_NAME,
          path: NOTIFICATIONS_PATH,
          interface: NOTIFICATIONS_INTERFACE,
          member: 'GetCapabilities',
        });
        this.capabilities = new Set((reply.body[0] as string[]) ?? []);
      } catch {
        return new Set(); // no server right now; ask again next time
      }
    }
    return this.capabilities;
  }

  /** Shows (or replaces) a notification; `onAction` runs when one of its actions is invoked. */
  async notify(spec: NotificationSpec, onAction?: ActionHandler, replacesId = 0): Promise<number> {
    const hints: [string, Variant][] = [
      ['urgency', variant('y', spec.urgency)],
      ['category', variant('s', spec.category)],
      ['desktop-entry', variant('s', APP_NAME)],
    ];
    if (spec.transient) hints.push(['transient', variant('b', true)]);
    const reply = await this.bus.call({
      destination: NOTIFICATIONS_NAME,
      path: NOTIFICATIONS_PATH,
      interface: NOTIFICATIONS_INTERFACE,
      member: 'Notify',
      signature: 'susssasa{sv}i',
      body: [
        APP_NAME,
        replacesId,
        spec.icon,
        spec.summary,
        spec.body,
        spec.actions.flatMap((a) => [a.key, a.label]),
        hints,
        spec.expireMs,
      ],
    });
    const id = reply.body[0] as number;
    this.servers.add(reply.sender);
    if (onAction && spec.actions.length > 0) this.handlers.set(id, onAction);
    else this.handlers.delete(id);
    return id;
  }

  async close(id: number): Promise<void> {
    this.handlers.delete(id);
    await this.bus
      .call({
        destination: NOTIFICATIONS_NAME,
        path: NOTIFICATIONS_PATH,
        interface: NOTIFICATIONS_INTERFACE,
        member: 'CloseNotification',
        signature: 'u',
        body: [id],
      })
      .catch(() => undefined);
  }

  dispose(): void {
    this.handlers.clear();
    this.subscriptions.dispose();
  }
}

export interface DeviceNotifierOptions {
  /** At most this many "Attach to <vm>" actions (default 3). */
  readonly maxTargets?: number;
  /** Report errors of the tray itself (a failed Notify, say). */
  readonly log?: (message: string) => void;
}

/**
 * Turns devgated's events into notifications, and their actions into API calls: the notification
 * half of devgate-tray.
 */
export class DeviceNotifier implements Disposable {
  /** The open "Device available" notification of each device key. */
  private readonly availableIds = new Map<string, number>();
  private readonly askIds = new Map<string, number>();
  private readonly subscription: Disposable;
  private readonly maxTargets: number;
  private readonly log: (message: string) => void;
  /** Notifications are sent in order, one at a time: ids are known before the next event. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly stream: DaemonStream,
    private readonly api: DaemonApi,
    private readonly notifications: NotificationsClient,
    options: DeviceNotifierOptions = {},
  ) {
    this.maxTargets = options.maxTargets ?? 3;
    this.log = options.log ?? (() => undefined);
    this.subscription = stream.on((event) => this.enqueue(() => this.onEvent(event)));
  }

  /** Resolves when every notification queued so far has been sent. */
  idle(): Promise<void> {
    return this.queue.then(() => undefined);
  }

  /** Tells the user an action failed: the coded error, with critical urgency. */
  reportFailure(failure: FailureText, icon = 'dialog-error'): Promise<void> {
    return this.enqueue(async () => {
      const mode = await this.mode();
      await this.notifications.notify(failureNotification(failure, icon, mode));
    });
  }

  dispose(): void {
    this.subscription.dispose();
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.queue.then(task).catch((error: unknown) => this.log(`notification failed: ${String(error)}`));
    this.queue = run;
    return run;
  }

  private async mode(): Promise<{ markup: boolean; actions: boolean }> {
    const capabilities = await this.notifications.serverCapabilities();
    return { markup: capabilities.has('body-markup'), actions: capabilities.has('actions') };
  }

  private async onEvent(event: TrayEvent): Promise<void> {
    switch (event.type) {
      case 'available':
        return this.deviceAvailable(event.device);
      case 'gone':
        return this.deviceGone(event.device);
      case 'ask':
        return this.askPending(event.ask);
      case 'ask-resolved': {
        const id = this.askIds.get(event.id);
        this.askIds.delete(event.id);
        if (id !== undefined) await this.notifications.close(id);
        return;
      }
      case 'audit':
        return this.auditEntry(event.entry);
      default:
        return;
    }
  }

  private async domainsView(): Promise<DomainsView> {
    const [domains, assignments, health] = await Promise.all([
      this.api.domains(),
      this.api.assignments().catch(() => []),
      this.api.health().catch(() => undefined),
    ]);
    return { domains, assignments, backends: health?.sources.map((s) => s.backend) ?? [] };
  }

  private async deviceAvailable(device: DeviceJson): Promise<void> {
    const mode = await this.mode();
    const targets = attachTargets(device, await this.domainsView().catch(() => emptyView), this.maxTargets);
    const key = deviceKey(device);
    const spec = deviceAddedNotification(device, targets, mode);
    const id = await this.notifications.notify(spec, (action) => this.onAvailableAction(device, targets, id, action));
    this.availableIds.set(key, id);
  }

  private async onAvailableAction(device: DeviceJson, targets: string[], id: number, action: string): Promise<void> {
    this.availableIds.delete(deviceKey(device));
    await this.notifications.close(id);
    const vm = targets.find((t) => action === `attach:${t}`);
    if (!vm) return; // "Ignore"
    // The device id pins what was announced: if another device took the port since, devgated refuses.
    await this.attach(device, vm);
  }

  /** Attaches through devgated; a failure becomes a device.error notification. */
  async attach(device: DeviceJson, vm: string): Promise<void> {
    try {
      await this.api.attach(device.class, vm, `${device.port}:${device.deviceId}`);
    } catch (error) {
      await this.reportFailure(
        { verb: 'Attaching', device: deviceTitle(device), vm, ...coded(error) },
        iconFor(device),
      );
    }
  }

  async detach(device: DeviceJson, vm: string): Promise<void> {
    try {
      await this.api.detach(device.class, vm, device.port);
    } catch (error) {
      await this.reportFailure(
        { verb: 'Detaching', device: deviceTitle(device), vm, ...coded(error) },
        iconFor(device),
      );
    }
  }

  private async deviceGone(device: DeviceJson): Promise<void> {
    const key = deviceKey(device);
    const open = this.availableIds.get(key);
    this.availableIds.delete(key);
    // Its "Attach to" actions would only fail now.
    if (open !== undefined) await this.notifications.close(open);
    const mode = await this.mode();
    await this.notifications.notify(deviceRemovedNotification(device, mode));
  }

  private async askPending(ask: AskJson): Promise<void> {
    const mode = await this.mode();
    const device = this.stream.device(ask.device);
    const spec = askNotification(ask, device, mode);
    const id = await this.notifications.notify(spec, (action) => this.onAskAction(ask, device, id, action));
    this.askIds.set(ask.id, id);
  }

  private async onAskAction(ask: AskJson, device: DeviceJson | undefined, id: number, action: string): Promise<void> {
    this.askIds.delete(ask.id);
    await this.notifications.close(id);
    let answer: { verdict: 'allow' | 'deny'; frontend?: string; remember?: boolean };
    if (action === AskAction.allow) answer = { verdict: 'allow', frontend: ask.candidates[0] };
    else if (action === AskAction.alwaysAllow)
      answer = { verdict: 'allow', frontend: ask.candidates[0], remember: true };
    else if (action === AskAction.deny) answer = { verdict: 'deny' };
    else if (action === AskAction.alwaysDeny) answer = { verdict: 'deny', remember: true };
    else if (action.startsWith(`${AskAction.allow}:`)) {
      const vm = ask.candidates.find((c) => action === `${AskAction.allow}:${c}`);
      if (!vm) return;
      answer = { verdict: 'allow', frontend: vm };
    } else return;
    try {
      await this.api.answer(ask.id, answer);
    } catch (error) {
      await this.reportFailure(
        {
          verb: 'Answering for',
          device: device ? deviceTitle(device) : ask.device,
          vm: answer.frontend,
          ...coded(error),
        },
        device ? iconFor(device) : 'dialog-error',
      );
    }
  }

  /**
   * Failures of what devgated does by itself (auto-attach) would otherwise go unseen; the tray's own
   * requests are reported from their answers, and a command line reports its own.
   */
  private async auditEntry(entry: AuditJson): Promise<void> {
    if (entry.outcome !== 'error' || !entry.actor.startsWith(DAEMON_ACTOR_PREFIX)) return;
    if (!['attach', 'auto-attach', 'detach'].includes(entry.action)) return;
    const port = entry.backend && entry.portId ? `${entry.backend}:${entry.portId}` : undefined;
    const device = port ? this.stream.device(port) : undefined;
    await this.reportFailure(
      {
        verb: entry.action === 'detach' ? 'Detaching' : 'Attaching',
        device: device ? deviceTitle(device) : (port ?? 'a device'),
        vm: entry.frontend ?? undefined,
        code: entry.code ?? 'DG_UNKNOWN',
        message: entry.reason ?? 'failed',
      },
      device ? iconFor(device) : 'dialog-error',
    );
  }
}

/** devgated's own actor names: `devgated`, `devgated (auto-attach)`. */
const DAEMON_ACTOR_PREFIX = 'devgated';

const emptyView: DomainsView = { domains: [], assignments: [], backends: [] };

function coded(error: unknown): { code: string; message: string; hint?: string } {
  if (error instanceof ApiError) return { code: error.code, message: error.message, hint: error.hint };
  return { code: 'DG_TRAY_ERROR', message: error instanceof Error ? error.message : String(error) };
}
