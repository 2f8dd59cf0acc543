/**
 * Desktop notifications (org.freedesktop.Notifications 1.2+, over the session bus): a device is
 * available (with "Attach to <vm>"), removed, an attach or detach failed, devgated asks. Invoking
 * an action (the server's ActionInvoked signal) calls devgated's API.
 */
import { DevgateError, type DeviceJson, type Disposable, DisposableCollection, errorCode } from '@devgate/core';
import { type DBusConnection, type Variant, variant } from './dbus.js';
import { ApiError, type AskJson, type AuditJson, type DaemonApi, seenDevice } from './daemon-api.js';
import { type DaemonStream, type TrayEvent, deviceKey } from './daemon-stream.js';
import { type DomainsView, attachTargets } from './attach-targets.js';
import {
  APP_NAME,
  AskAction,
  type FailureText,
  type NotificationSpec,
  askNotification,
  askTimeLeftMs,
  deviceAddedNotification,
  deviceRemovedNotification,
  deviceTitle,
  devicesBurstNotification,
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
  private readonly closeHandlers = new Map<number, () => void>();
  private readonly subscriptions = new DisposableCollection();
  private capabilities?: Set<string>;
  /** Unique names that answered our Notify calls: the only senders whose signals we trust. */
  private readonly servers = new Set<string>();
  /** Ids of our notifications the current server shows (another server may give them to others). */
  private readonly live = new Set<number>();
  private readonly serverStartedListeners = new Set<() => void>();

  constructor(private readonly bus: DBusConnection) {}

  async start(): Promise<this> {
    const filter = { interface: NOTIFICATIONS_INTERFACE, path: NOTIFICATIONS_PATH };
    this.subscriptions.push(
      // A server that stops or is replaced takes its notifications along; the next one may read
      // markup the old one did not, and gives its ids to other applications.
      await this.bus.onSignal(
        { interface: 'org.freedesktop.DBus', member: 'NameOwnerChanged', sender: 'org.freedesktop.DBus' },
        (body) => {
          if (body[0] !== NOTIFICATIONS_NAME) return;
          this.serverChanged();
          if (body[2]) for (const listener of [...this.serverStartedListeners]) listener();
        },
      ),
      await this.bus.onSignal({ ...filter, member: 'ActionInvoked' }, (body, message) => {
        const [id, key] = body as [number, string];
        if (!this.servers.has(message.sender ?? '')) return;
        const handler = this.handlers.get(id);
        if (handler && typeof key === 'string') void Promise.resolve(handler(key)).catch(() => undefined);
      }),
      await this.bus.onSignal({ ...filter, member: 'NotificationClosed' }, (body, message) => {
        if (!this.servers.has(message.sender ?? '')) return;
        const id = body[0] as number;
        this.handlers.delete(id);
        this.live.delete(id);
        const onClosed = this.closeHandlers.get(id);
        this.closeHandlers.delete(id);
        onClosed?.();
      }),
    );
    return this;
  }

  /** Runs when a notification server takes over (started, restarted or replaced): it shows nothing of ours yet. */
  onServerStarted(listener: () => void): Disposable {
    this.serverStartedListeners.add(listener);
    return { dispose: () => this.serverStartedListeners.delete(listener) };
  }

  /** The server's capabilities (`actions`, `body-markup`, ...), read once; nothing if it would not tell. */
  async serverCapabilities(): Promise<Set<string> | undefined> {
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
        return undefined; // no server right now, or one that does not answer: ask again next time
      }
    }
    return this.capabilities;
  }

  /** Shows (or replaces) a notification; `onAction` runs when one of its actions is invoked. */
  async notify(
    spec: NotificationSpec,
    onAction?: ActionHandler,
    replacesId = 0,
    onClosed?: () => void,
  ): Promise<number> {
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
    this.live.add(id);
    if (onAction && spec.actions.length > 0) this.handlers.set(id, onAction);
    else this.handlers.delete(id);
    if (onClosed) this.closeHandlers.set(id, onClosed);
    else this.closeHandlers.delete(id);
    return id;
  }

  async close(id: number): Promise<void> {
    this.handlers.delete(id);
    this.closeHandlers.delete(id);
    // Not ours (any more): the server that showed it is gone, and the id may be someone else's now.
    if (!this.live.delete(id)) return;
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

  /** Everything the old server showed is gone with it: forget its ids, actions and capabilities. */
  private serverChanged(): void {
    this.capabilities = undefined;
    this.servers.clear();
    this.live.clear();
    this.handlers.clear();
    const closed = [...this.closeHandlers.values()];
    this.closeHandlers.clear();
    for (const onClosed of closed) onClosed();
  }

  dispose(): void {
    this.handlers.clear();
    this.closeHandlers.clear();
    this.serverStartedListeners.clear();
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
  /** Asks the user answered here, until devgated reports them resolved. */
  private readonly answered = new Set<string>();
  private readonly subscriptions = new DisposableCollection();
  private readonly maxTargets: number;
  private readonly log: (message: string) => void;
  /** Notifications are sent in order, one at a time: ids are known before the next event. */
  private queue: Promise<unknown> = Promise.resolve();
  /**
   * Asks have their own queue: a question that waits behind a burst of device notifications (256
   * at once take minutes to show) would be denied by its timeout before the user saw it.
   */
  private askQueue: Promise<unknown> = Promise.resolve();
  /** Devices that became available or went, not yet shown: a burst is shown as one notification. */
  private pending: { readonly how: 'available' | 'gone'; readonly device: DeviceJson }[] = [];
  private flushQueued = false;
  /** The open burst notification of each kind, replaced while its burst goes on. */
  private readonly bursts: { available?: Burst; removed?: Burst } = {};

  constructor(
    private readonly stream: DaemonStream,
    private readonly api: DaemonApi,
    private readonly notifications: NotificationsClient,
    options: DeviceNotifierOptions = {},
  ) {
    this.maxTargets = options.maxTargets ?? 3;
    this.log = options.log ?? (() => undefined);
    this.subscriptions.push(
      stream.on((event) => this.dispatch(event)),
      // A question left unanswered went with the old server: the user must still be able to answer it.
      notifications.onServerStarted(() => {
        for (const ask of stream.asks())
          if (!this.answered.has(ask.id)) void this.enqueueAsk(() => this.askPending(ask));
      }),
    );
  }

  /** Resolves when every notification queued so far has been sent. */
  async idle(): Promise<void> {
    while (this.flushQueued) await this.queue;
    await Promise.all([this.queue, this.askQueue]);
  }

  /** Tells the user an action failed: the coded error, with critical urgency. */
  reportFailure(failure: FailureText, icon = 'dialog-error'): Promise<void> {
    return this.enqueue(() => this.showFailure(failure, icon));
  }

  /** Only from the queue's own tasks: one that enqueued and waited would wait for itself. */
  private async showFailure(failure: FailureText, icon: string): Promise<void> {
    const mode = await this.mode();
    await this.notifications.notify(failureNotification(failure, icon, mode));
  }

  dispose(): void {
    this.subscriptions.dispose();
  }

  private dispatch(event: TrayEvent): void {
    if (event.type === 'available' || event.type === 'gone') {
      this.pending.push({ how: event.type, device: event.device });
      if (!this.flushQueued) {
        this.flushQueued = true;
        void this.enqueue(() => this.flush());
      }
    } else if (event.type === 'ask' || event.type === 'ask-resolved') {
      void this.enqueueAsk(() => this.onEvent(event));
    } else {
      void this.enqueue(() => this.onEvent(event));
    }
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.queue.then(task).catch((error: unknown) => this.log(`notification failed: ${String(error)}`));
    this.queue = run;
    return run;
  }

  private enqueueAsk(task: () => Promise<void>): Promise<void> {
    const run = this.askQueue.then(task).catch((error: unknown) => this.log(`notification failed: ${String(error)}`));
    this.askQueue = run;
    return run;
  }

  /**
   * Shows what became available or went since the last flush. Events arrive faster than a server
   * shows notifications exactly when many devices come at once, so what waits here is a burst: up to
   * BURST_LIMIT devices get their own notification, more get one together.
   */
  private async flush(): Promise<void> {
    this.flushQueued = false;
    const batch = this.pending;
    this.pending = [];
    const available = new Map<string, DeviceJson>();
    const gone: DeviceJson[] = [];
    for (const { how, device } of batch) {
      const key = deviceKey(device);
      if (how === 'available') available.set(key, device);
      // Came and went before it was shown: news to nobody.
      else if (!available.delete(key)) gone.push(device);
    }
    if (gone.length > BURST_LIMIT) await this.devicesGoneTogether(gone);
    else for (const device of gone) await this.deviceGone(device);
    if (available.size > BURST_LIMIT) await this.showBurst('available', [...available.values()]);
    else for (const device of available.values()) await this.deviceAvailable(device);
  }

  /** One notification for many devices; a burst still going on grows the notification it opened. */
  private async showBurst(how: 'available' | 'removed', devices: DeviceJson[]): Promise<void> {
    const mode = await this.mode();
    const open = this.bursts[how];
    const going = open !== undefined && Date.now() - open.at < BURST_WINDOW_MS;
    const together = new Map(going ? open.devices : undefined);
    for (const device of devices) together.set(deviceKey(device), device);
    const id = await this.notifications.notify(
      devicesBurstNotification([...together.values()], how, mode),
      undefined,
      going ? open.id : 0,
      () => {
        if (this.bursts[how]?.id === id) this.bursts[how] = undefined;
      },
    );
    this.bursts[how] = { id, devices: together, at: Date.now() };
  }

  private async devicesGoneTogether(devices: DeviceJson[]): Promise<void> {
    for (const device of devices) await this.forget(device);
    await this.showBurst('removed', devices);
  }

  /** Closes what still offers the device: its "Device available", or its place in a burst. */
  private async forget(device: DeviceJson): Promise<void> {
    const key = deviceKey(device);
    const open = this.availableIds.get(key);
    this.availableIds.delete(key);
    // Its "Attach to" actions would only fail now.
    if (open !== undefined) await this.notifications.close(open);
    const burst = this.bursts.available;
    if (burst?.devices.delete(key) && burst.devices.size === 0) {
      this.bursts.available = undefined;
      await this.notifications.close(burst.id);
    }
  }

  private async mode(): Promise<{ markup: boolean | 'unknown'; actions: boolean }> {
    const capabilities = await this.notifications.serverCapabilities();
    // Unknown capabilities: the body is made safe for a server that reads markup and one that does not.
    if (!capabilities) return { markup: 'unknown', actions: false };
    return { markup: capabilities.has('body-markup'), actions: capabilities.has('actions') };
  }

  /** Asks and audit entries (devices that come and go are shown by flush()). */
  private async onEvent(event: TrayEvent): Promise<void> {
    switch (event.type) {
      case 'ask':
        return this.askPending(event.ask);
      case 'ask-resolved': {
        const id = this.askIds.get(event.id);
        this.askIds.delete(event.id);
        this.answered.delete(event.id);
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

  /**
   * Attaches through devgated; a failure becomes a device.error notification. The device id pins
   * the device shown (a menu or notification may be out of date), for detach as well.
   */
  async attach(device: DeviceJson, vm: string): Promise<void> {
    try {
      await this.api.attach(device.class, vm, seenDevice(device));
    } catch (error) {
      await this.reportFailure(
        { verb: 'Attaching', device: deviceTitle(device), vm, ...coded(error) },
        iconFor(device),
      );
    }
  }

  async detach(device: DeviceJson, vm: string): Promise<void> {
    try {
      await this.api.detach(device.class, vm, seenDevice(device));
    } catch (error) {
      await this.reportFailure(
        { verb: 'Detaching', device: deviceTitle(device), vm, ...coded(error) },
        iconFor(device),
      );
    }
  }

  private async deviceGone(device: DeviceJson): Promise<void> {
    await this.forget(device);
    const mode = await this.mode();
    await this.notifications.notify(deviceRemovedNotification(device, mode));
  }

  private async askPending(ask: AskJson): Promise<void> {
    // Shown without time left, it would stay until dismissed, offering an answer devgated refuses.
    if (askTimeLeftMs(ask) === undefined) return this.log(`ask ${ask.id} not shown: its time is up`);
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
    this.answered.add(ask.id);
    try {
      await this.api.answer(ask.id, answer);
    } catch (error) {
      this.answered.delete(ask.id); // still open, unless devgated says otherwise
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
    // This runs in the queue already.
    await this.showFailure(
      {
        verb: entry.action === 'detach' ? 'Detaching' : 'Attaching',
        device: device ? deviceTitle(device) : (port ?? 'a device'),
        vm: entry.frontend ?? undefined,
        code: entry.code ?? 'DG_INTERNAL',
        message: entry.reason ?? 'failed',
      },
      device ? iconFor(device) : 'dialog-error',
    );
  }
}

/** More devices than this at once are shown in one notification. */
export const BURST_LIMIT = 3;
/** A burst notification updated this recently is still the same burst. */
const BURST_WINDOW_MS = 10_000;

interface Burst {
  readonly id: number;
  readonly devices: Map<string, DeviceJson>;
  /** When it was last shown. */
  readonly at: number;
}

/** devgated's own actor names: `devgated`, `devgated (auto-attach)`. */
const DAEMON_ACTOR_PREFIX = 'devgated';

const emptyView: DomainsView = { domains: [], assignments: [], backends: [] };

/** devgated's refusal as it sent it; anything else coded as devgated codes it (DG_INTERNAL). */
function coded(error: unknown): { code: string; message: string; hint?: string } {
  if (error instanceof ApiError || error instanceof DevgateError) {
    return { code: error.code, message: error.message, hint: error.hint };
  }
  return { code: errorCode(error), message: error instanceof Error ? error.message : String(error) };
}
