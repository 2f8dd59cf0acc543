/**
 * The tray icon: a StatusNotifierItem (org.kde.StatusNotifierItem, category Hardware) registered
 * with the org.kde.StatusNotifierWatcher, whose menu is served as com.canonical.dbusmenu. The menu
 * is rebuilt from devgated's device list whenever it changes, and LayoutUpdated tells the host.
 */
import { type DeviceJson, type Disposable, DisposableCollection } from '@devgate/core';
import { type DBusConnection, type DBusMessage, type Variant, plain, variant } from './dbus.js';
import { type DaemonApi } from './daemon-api.js';
import { type DaemonStream } from './daemon-stream.js';
import { type DomainsView } from './attach-targets.js';
import { type MenuAction, type MenuItem, buildMenu, listedDevices } from './menu-model.js';

export const ITEM_PATH = '/StatusNotifierItem';
export const MENU_PATH = '/MenuBar';
export const ITEM_INTERFACE = 'org.kde.StatusNotifierItem';
export const MENU_INTERFACE = 'com.canonical.dbusmenu';
export const WATCHER_NAME = 'org.kde.StatusNotifierWatcher';
export const WATCHER_PATH = '/StatusNotifierWatcher';
export const WATCHER_INTERFACE = 'org.kde.StatusNotifierWatcher';
export const ICON_NAME = 'drive-removable-media';

export interface TrayOptions {
  /** How long a new device carries the NEW mark (Qubes: 2 minutes). */
  readonly newMarkMs?: number;
  /** Runs a menu action (attach, detach, settings, quit). */
  readonly onAction: (action: MenuAction) => void | Promise<void>;
  readonly log?: (message: string) => void;
}

interface Node {
  readonly id: number;
  readonly item: MenuItem;
  readonly children: Node[];
}

let instances = 0;

export class TrayIcon implements Disposable {
  private readonly disposables = new DisposableCollection();
  private readonly ids = new Map<string, number>();
  private nextId = 1;
  private revision = 0;
  private root: Node = { id: 0, item: { key: 'root' }, children: [] };
  private readonly byId = new Map<number, Node>();
  private view: DomainsView = { domains: [], assignments: [], backends: [] };
  private status = 'Active';
  private toolTip = '';
  private refreshTimer?: NodeJS.Timeout;
  private markTimer?: NodeJS.Timeout;
  private serviceName = '';
  private fingerprint = '';
  private readonly newMarkMs: number;
  private readonly log: (message: string) => void;
  private stopped = false;

  constructor(
    private readonly bus: DBusConnection,
    private readonly stream: DaemonStream,
    private readonly api: DaemonApi,
    private readonly options: TrayOptions,
  ) {
    this.newMarkMs = options.newMarkMs ?? 120_000;
    this.log = options.log ?? (() => undefined);
    this.byId.set(0, this.root);
  }

  /** The bus name the item is served under (`org.kde.StatusNotifierItem-<pid>-<n>`). */
  get service(): string {
    return this.serviceName;
  }

  get layoutRevision(): number {
    return this.revision;
  }

  async start(): Promise<this> {
    this.serviceName = `org.kde.StatusNotifierItem-${process.pid}-${++instances}`;
    this.rebuild();
    this.disposables.push(this.bus.export(ITEM_PATH, this.itemInterface()));
    this.disposables.push(this.bus.export(MENU_PATH, this.menuInterface()));
    await this.bus.requestName(this.serviceName);
    // A watcher that starts (or restarts) after us gets told we are here.
    this.disposables.push(
      await this.bus.onSignal(
        { interface: 'org.freedesktop.DBus', member: 'NameOwnerChanged', sender: 'org.freedesktop.DBus' },
        (body) => {
          const [name, , owner] = body as [string, string, string];
          if (name === WATCHER_NAME && owner) void this.register();
        },
      ),
    );
    this.disposables.push(this.stream.on(() => this.scheduleRefresh()));
    await this.register();
    this.scheduleRefresh();
    return this;
  }

  /** Registers with the StatusNotifierWatcher, if one runs; true when it accepted. */
  async register(): Promise<boolean> {
    try {
      await this.bus.call({
        destination: WATCHER_NAME,
        path: WATCHER_PATH,
        interface: WATCHER_INTERFACE,
        member: 'RegisterStatusNotifierItem',
        signature: 's',
        body: [this.serviceName],
        timeoutMs: 5000,
      });
      return true;
    } catch (error) {
      this.log(`no StatusNotifierWatcher yet (${(error as Error).message}); waiting for one`);
      return false;
    }
  }

  /** Rebuilds the menu now (normally debounced after device events). */
  async refresh(): Promise<void> {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (this.stopped) return;
    if (this.stream.isConnected) {
      try {
        const [domains, assignments, health] = await Promise.all([
          this.api.domains(),
          this.api.assignments(),
          this.api.health(),
        ]);
        this.view = { domains, assignments, backends: health.sources.map((s) => s.backend) };
      } catch {
        // keep the last view: the stream reconnects and we refresh again then
      }
    }
    if (this.stopped) return;
    this.rebuild();
  }

  dispose(): void {
    this.stopped = true;
    clearTimeout(this.refreshTimer);
    clearTimeout(this.markTimer);
    this.disposables.dispose();
    if (!this.bus.isClosed) this.bus.callBus('ReleaseName', 's', [this.serviceName]).catch(() => undefined);
  }

  // -- model

  private scheduleRefresh(): void {
    if (this.refreshTimer || this.stopped) return;
    this.refreshTimer = setTimeout(() => void this.refresh(), 50);
  }

  private isNew(device: DeviceJson): boolean {
    const since = this.stream.announcedSince(device);
    return since !== undefined && Date.now() - since < this.newMarkMs;
  }

  private rebuild(): void {
    const items = buildMenu({
      devices: this.stream.devices(),
      view: this.view,
      connected: this.stream.isConnected,
      isNew: (d) => this.isNew(d),
    });
    this.byId.clear();
    this.root = { id: 0, item: { key: 'root' }, children: items.map((i) => this.node(i)) };
    this.byId.set(0, this.root);
    // The actions hold device objects; what a host sees is the rest.
    const fingerprint = JSON.stringify(items, (key, value: unknown) => (key === 'action' ? undefined : value));
    if (fingerprint !== this.fingerprint) {
      this.fingerprint = fingerprint;
      this.revision++;
      this.bus.emitSignal(MENU_PATH, MENU_INTERFACE, 'LayoutUpdated', 'ui', [this.revision, 0]);
    }
    this.updateStatus();
    this.scheduleMarkExpiry();
  }

  private node(item: MenuItem): Node {
    let id = this.ids.get(item.key);
    if (id === undefined) this.ids.set(item.key, (id = this.nextId++));
    const node: Node = { id, item, children: (item.children ?? []).map((c) => this.node(c)) };
    this.byId.set(id, node);
    return node;
  }

  /** NEW marks expire: redraw when the first one does. */
  private scheduleMarkExpiry(): void {
    clearTimeout(this.markTimer);
    const expiries = this.stream
      .devices()
      .map((d) => this.stream.announcedSince(d))
      .filter((t): t is number => t !== undefined)
      .map((t) => t + this.newMarkMs - Date.now())
      .filter((ms) => ms > 0);
    if (expiries.length === 0) return;
    this.markTimer = setTimeout(() => this.rebuild(), Math.min(...expiries) + 50);
    this.markTimer.unref();
  }

  private updateStatus(): void {
    const listed = listedDevices(this.stream.devices());
    const attached = listed.filter((d) => d.attachment).length;
    const asks = this.stream.asks().length;
    const status = asks > 0 ? 'NeedsAttention' : 'Active';
    const toolTip = !this.stream.isConnected
      ? 'devgated is not reachable'
      : `${listed.length} device${listed.length === 1 ? '' : 's'}, ${attached} attached` +
        (asks > 0 ? `, ${asks} waiting for an answer` : '');
    if (status !== this.status) {
      this.status = status;
      this.bus.emitSignal(ITEM_PATH, ITEM_INTERFACE, 'NewStatus', 's', [status]);
    }
    if (toolTip !== this.toolTip) {
      this.toolTip = toolTip;
      this.bus.emitSignal(ITEM_PATH, ITEM_INTERFACE, 'NewToolTip', '', []);
    }
  }

  // -- D-Bus

  private itemInterface() {
    const noPixmaps = () => [];
    const constant = (signature: string, value: unknown) => ({ signature, get: () => value });
    const ignore = () => [];
    return {
      name: ITEM_INTERFACE,
      methods: {
        ContextMenu: { in: 'ii', out: '', handler: ignore },
        Activate: { in: 'ii', out: '', handler: ignore },
        SecondaryActivate: { in: 'ii', out: '', handler: ignore },
        Scroll: { in: 'is', out: '', handler: ignore },
      },
      properties: {
        Category: constant('s', 'Hardware'),
        Id: constant('s', 'devgate-tray'),
        Title: constant('s', 'devgate devices'),
        Status: { signature: 's', get: () => this.status },
        WindowId: constant('i', 0),
        IconName: constant('s', ICON_NAME),
        IconPixmap: { signature: 'a(iiay)', get: noPixmaps },
        OverlayIconName: constant('s', ''),
        OverlayIconPixmap: { signature: 'a(iiay)', get: noPixmaps },
        AttentionIconName: constant('s', 'dialog-question'),
        AttentionIconPixmap: { signature: 'a(iiay)', get: noPixmaps },
        AttentionMovieName: constant('s', ''),
        ToolTip: { signature: '(sa(iiay)ss)', get: () => [ICON_NAME, [], 'devgate devices', this.toolTip] },
        ItemIsMenu: constant('b', true),
        Menu: constant('o', MENU_PATH),
        IconThemePath: constant('s', ''),
      },
      signals: {
        NewTitle: '',
        NewIcon: '',
        NewAttentionIcon: '',
        NewOverlayIcon: '',
        NewToolTip: '',
        NewStatus: 's',
      },
    };
  }

  private menuInterface() {
    return {
      name: MENU_INTERFACE,
      methods: {
        GetLayout: {
          in: 'iias',
          out: 'u(ia{sv}av)',
          handler: ([parentId, depth, names]: unknown[]) => {
            const node = this.byId.get(parentId as number);
            if (!node) throw new Error(`no menu item ${String(parentId)}`);
            return [this.revision, this.layout(node, depth as number, names as string[])];
          },
        },
        GetGroupProperties: {
          in: 'aias',
          out: 'a(ia{sv})',
          handler: ([ids, names]: unknown[]) => {
            const wanted = (ids as number[]).length > 0 ? (ids as number[]) : [...this.byId.keys()];
            return [
              wanted
                .map((id) => this.byId.get(id))
                .filter((n): n is Node => n !== undefined)
                .map((n) => [n.id, this.properties(n, names as string[])]),
            ];
          },
        },
        GetProperty: {
          in: 'is',
          out: 'v',
          handler: ([id, name]: unknown[]) => {
            const node = this.byId.get(id as number);
            const property = node && this.properties(node, [name as string])[0];
            if (!property) throw new Error(`no property ${String(name)} on item ${String(id)}`);
            return [property[1]];
          },
        },
        Event: {
          in: 'isvu',
          out: '',
          handler: ([id, eventId]: unknown[], call: DBusMessage) => {
            this.onEvent(id as number, eventId as string, call);
            return [];
          },
        },
        EventGroup: {
          in: 'a(isvu)',
          out: 'ai',
          handler: ([events]: unknown[], call: DBusMessage) => {
            const missing: number[] = [];
            for (const [id, eventId] of events as [number, string][]) {
              if (this.byId.has(id)) this.onEvent(id, eventId, call);
              else missing.push(id);
            }
            return [missing];
          },
        },
        AboutToShow: { in: 'i', out: 'b', handler: () => [false] },
        AboutToShowGroup: {
          in: 'ai',
          out: 'aiai',
          handler: ([ids]: unknown[]) => [[], (ids as number[]).filter((id) => !this.byId.has(id))],
        },
      },
      properties: {
        Version: { signature: 'u', get: () => 3 },
        TextDirection: { signature: 's', get: () => 'ltr' },
        Status: { signature: 's', get: () => (this.status === 'NeedsAttention' ? 'notice' : 'normal') },
        IconThemePath: { signature: 'as', get: () => [] },
      },
      signals: {
        ItemsPropertiesUpdated: 'a(ia{sv})a(ias)',
        LayoutUpdated: 'ui',
        ItemActivationRequested: 'iu',
      },
    };
  }

  private onEvent(id: number, eventId: string, _call: DBusMessage): void {
    if (eventId !== 'clicked') return;
    const action = this.byId.get(id)?.item.action;
    if (!action) return;
    // After the Event call is answered: an action may take long (attach) or end us (quit).
    setImmediate(
      () =>
        void Promise.resolve()
          .then(() => this.options.onAction(action))
          .catch((error: unknown) => this.log(`menu action failed: ${String(error)}`)),
    );
  }

  private layout(node: Node, depth: number, names: string[]): unknown[] {
    const children =
      depth === 0 ? [] : node.children.map((c) => variant('(ia{sv}av)', this.layout(c, depth - 1, names)));
    return [node.id, this.properties(node, names), children];
  }

  private properties(node: Node, names: readonly string[]): [string, Variant][] {
    const item = node.item;
    const all: [string, Variant][] = [];
    if (node.id === 0) {
      all.push(['children-display', variant('s', 'submenu')]);
    } else if (item.separator) {
      all.push(['type', variant('s', 'separator')]);
    } else {
      all.push(['label', variant('s', item.label ?? '')]);
      if (item.enabled === false) all.push(['enabled', variant('b', false)]);
      if (item.iconName) all.push(['icon-name', variant('s', item.iconName)]);
      if (node.children.length > 0) all.push(['children-display', variant('s', 'submenu')]);
    }
    return names.length === 0 ? all : all.filter(([key]) => names.includes(key));
  }
}

/** A received GetLayout node as plain data (for clients and tests). */
export interface LayoutNode {
  readonly id: number;
  readonly properties: Record<string, unknown>;
  readonly children: LayoutNode[];
}

export function decodeLayout(raw: unknown): LayoutNode {
  const [id, properties, children] = plain('(ia{sv}av)', raw) as [number, Record<string, unknown>, unknown[]];
  return { id, properties, children: children.map(toLayoutNode) };
}

function toLayoutNode(value: unknown): LayoutNode {
  const [id, properties, children] = value as [number, Record<string, unknown>, unknown[]];
  return { id, properties, children: children.map(toLayoutNode) };
}
