/**
 * A small, typed layer over @homebridge/dbus-native (ADR 0005): method calls with a timeout,
 * signal subscriptions, and exported objects served by our own dispatcher, so that a malformed call
 * from another client on the bus is answered with an error instead of throwing inside the library.
 *
 * It uses only the library's documented low-level connection (dbus-native-api.ts): it says Hello,
 * numbers its messages and matches replies to calls itself.
 */
import { type Disposable } from '@devgate/core';
import {
  type DBusMessage,
  type NativeConnection,
  type NativeSignatureTree,
  MessageType,
  createConnection,
  endConnection,
  fromNativeVariant,
  noReplyExpected,
  toNativeVariant,
} from './dbus-native-api.js';

export type { DBusMessage } from './dbus-native-api.js';

const { METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL } = MessageType;
const BUS = { destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus' };

/** An error a D-Bus peer returned (or a call that never got an answer). */
export class DBusError extends Error {
  constructor(
    readonly dbusName: string,
    message: string,
  ) {
    super(`${dbusName}: ${message}`);
  }
}

/** A variant to send: its signature and value, in dbus-native's `[signature, value]` form. */
export type Variant = [string, unknown];
export const variant = (signature: string, value: unknown): Variant => toNativeVariant(signature, value);

export interface MethodCall {
  readonly destination: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly signature?: string;
  readonly body?: unknown[];
  readonly timeoutMs?: number;
}

export interface MethodReply {
  readonly body: unknown[];
  /** The unique name of the connection that answered. */
  readonly sender: string;
}

export interface SignalFilter {
  readonly interface: string;
  readonly member?: string;
  readonly path?: string;
  /** A well-known or unique name; the bus resolves it for the match rule. */
  readonly sender?: string;
}

/** One exported method: its in and out signatures, and a handler returning the whole out body. */
export interface ExportedMethod {
  readonly in: string;
  readonly out: string;
  readonly handler: (args: unknown[], call: DBusMessage) => unknown[] | Promise<unknown[]>;
}

export interface ExportedInterface {
  readonly name: string;
  readonly methods: Readonly<Record<string, ExportedMethod>>;
  readonly properties: Readonly<Record<string, { readonly signature: string; readonly get: () => unknown }>>;
  readonly signals: Readonly<Record<string, string>>;
}

/** A connection to a message bus (the session bus unless told otherwise). */
export class DBusConnection implements Disposable {
  private readonly objects = new Map<string, Map<string, ExportedInterface>>();
  private readonly signalListeners = new Set<{ filter: SignalFilter; handler: (m: DBusMessage) => void }>();
  private readonly closeListeners = new Set<(error?: Error) => void>();
  private closed = false;
  /** Calls waiting for an answer, by serial: failed at once when the connection ends. */
  private readonly pending = new Map<number, { answer: (m: DBusMessage) => void; fail: (error: Error) => void }>();
  private lastSerial = 0;
  private name = '';
  /** Why the connection closed, if it failed. */
  private closeError?: Error;

  private constructor(private readonly connection: NativeConnection) {
    connection.on('message', (message: DBusMessage) => {
      if (message.type === METHOD_CALL) this.serve(message);
      else if (message.type === SIGNAL) this.dispatchSignal(message);
      else if (message.type === METHOD_RETURN || message.type === ERROR) this.answer(message);
    });
    const ended = () => this.markClosed(new Error('the bus closed the connection'));
    connection.stream.once('end', ended);
    connection.stream.once('close', ended);
    connection.on('error', (error: Error) => this.markClosed(error));
  }

  /** The unique name (`:1.42`) the bus gave this connection. */
  get uniqueName(): string {
    return this.name;
  }

  /** Connects and completes the Hello handshake; `address` defaults to $DBUS_SESSION_BUS_ADDRESS. */
  static async connect(address = process.env.DBUS_SESSION_BUS_ADDRESS, timeoutMs = 5000): Promise<DBusConnection> {
    if (!address) throw new Error('no session bus: DBUS_SESSION_BUS_ADDRESS is not set');
    const bus = new DBusConnection(createConnection(address));
    try {
      const { body } = await bus.call({ ...BUS, member: 'Hello', timeoutMs });
      if (typeof body[0] !== 'string') throw new Error('the bus did not accept Hello');
      bus.name = body[0];
      return bus;
    } catch (error) {
      bus.dispose();
      if (bus.closeError) throw bus.closeError;
      if (error instanceof DBusError && error.dbusName === 'org.freedesktop.DBus.Error.NoReply') {
        throw new Error(`no answer from the bus at ${address} within ${timeoutMs} ms`);
      }
      throw error;
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  onClose(listener: (error?: Error) => void): Disposable {
    this.closeListeners.add(listener);
    return { dispose: () => this.closeListeners.delete(listener) };
  }

  call(call: MethodCall): Promise<MethodReply> {
    if (this.closed) return Promise.reject(new DBusError('org.freedesktop.DBus.Error.Disconnected', 'not connected'));
    const serial = this.nextSerial();
    const message: DBusMessage = {
      type: METHOD_CALL,
      serial,
      destination: call.destination,
      path: call.path,
      interface: call.interface,
      member: call.member,
      ...(call.signature ? { signature: call.signature, body: call.body ?? [] } : {}),
    };
    const timeoutMs = call.timeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const settle = () => {
        clearTimeout(timer);
        this.pending.delete(serial);
      };
      const pending = {
        answer: (reply: DBusMessage) => {
          settle();
          const body = reply.body ?? [];
          if (reply.type === ERROR) {
            const text = typeof body[0] === 'string' ? body[0] : '';
            reject(new DBusError(reply.errorName ?? 'org.freedesktop.DBus.Error.Failed', text));
          } else {
            resolve({ body, sender: reply.sender ?? '' });
          }
        },
        fail: (error: Error) => {
          settle();
          reject(error);
        },
      };
      const timer = setTimeout(
        () =>
          pending.fail(
            new DBusError('org.freedesktop.DBus.Error.NoReply', `${call.member} got no answer within ${timeoutMs} ms`),
          ),
        timeoutMs,
      );
      this.pending.set(serial, pending);
      try {
        this.connection.message(message);
      } catch (error) {
        pending.fail(error as Error);
      }
    });
  }

  /** Calls a method of the bus itself (org.freedesktop.DBus). */
  async callBus(member: string, signature?: string, body?: unknown[]): Promise<unknown[]> {
    const reply = await this.call({ ...BUS, member, signature, body });
    return reply.body;
  }

  /** Subscribes to signals: adds a match rule on the bus and filters what arrives. */
  async onSignal(filter: SignalFilter, handler: (body: unknown[], message: DBusMessage) => void): Promise<Disposable> {
    const rule = matchRule(filter);
    await this.callBus('AddMatch', 's', [rule]);
    const entry = {
      filter: { ...filter, sender: filter.sender?.startsWith(':') ? filter.sender : undefined },
      handler: (m: DBusMessage) => handler(m.body ?? [], m),
    };
    this.signalListeners.add(entry);
    return {
      dispose: () => {
        this.signalListeners.delete(entry);
        if (!this.closed) this.callBus('RemoveMatch', 's', [rule]).catch(() => undefined);
      },
    };
  }

  /** Owns a well-known name; throws unless we became its primary owner. */
  async requestName(name: string): Promise<void> {
    if (!(await this.tryRequestName(name))) throw new Error(`the bus name ${name} is owned by another connection`);
  }

  /** Owns a well-known name if nobody else does (no queueing); false when another connection has it. */
  async tryRequestName(name: string): Promise<boolean> {
    const DO_NOT_QUEUE = 4;
    const [result] = await this.callBus('RequestName', 'su', [name, DO_NOT_QUEUE]);
    // 1: primary owner now, 4: already was; 3: exists (someone else).
    if (result === 1 || result === 4) return true;
    if (result === 3) return false;
    throw new Error(`could not own the bus name ${name} (result ${String(result)})`);
  }

  async nameOwner(name: string): Promise<string | undefined> {
    try {
      const [owner] = await this.callBus('GetNameOwner', 's', [name]);
      return typeof owner === 'string' ? owner : undefined;
    } catch {
      return undefined;
    }
  }

  /** Serves `iface` at `path` until the returned Disposable is disposed. */
  export(path: string, iface: ExportedInterface): Disposable {
    let byName = this.objects.get(path);
    if (!byName) this.objects.set(path, (byName = new Map()));
    byName.set(iface.name, iface);
    return {
      dispose: () => {
        byName.delete(iface.name);
        if (byName.size === 0) this.objects.delete(path);
      },
    };
  }

  emitSignal(path: string, iface: string, member: string, signature: string, body: unknown[]): void {
    if (this.closed) return;
    this.send({ type: SIGNAL, path, interface: iface, member, ...(signature ? { signature, body } : {}) });
  }

  dispose(): void {
    if (this.closed) return;
    this.closed = true;
    this.failPending();
    endConnection(this.connection);
  }

  // -- internals

  private failPending(): void {
    const error = new DBusError('org.freedesktop.DBus.Error.Disconnected', 'the connection was closed');
    for (const pending of [...this.pending.values()]) pending.fail(error);
  }

  private markClosed(error?: Error): void {
    const wasOpen = !this.closed;
    if (wasOpen) this.closeError = error;
    this.closed = true;
    this.failPending();
    if (wasOpen) for (const listener of [...this.closeListeners]) listener(error);
  }

  /** D-Bus serials are nonzero 32-bit numbers; ours count up from 1 and wrap. */
  private nextSerial(): number {
    this.lastSerial = this.lastSerial >= 0xffffffff ? 1 : this.lastSerial + 1;
    return this.lastSerial;
  }

  private send(message: DBusMessage): void {
    this.connection.message({ ...message, serial: this.nextSerial() });
  }

  /** A method return or error: to the call waiting for it, if any (a late answer finds none). */
  private answer(message: DBusMessage): void {
    if (message.replySerial !== undefined) this.pending.get(message.replySerial)?.answer(message);
  }

  private dispatchSignal(message: DBusMessage): void {
    for (const { filter, handler } of [...this.signalListeners]) {
      if (filter.interface !== message.interface) continue;
      if (filter.member !== undefined && filter.member !== message.member) continue;
      if (filter.path !== undefined && filter.path !== message.path) continue;
      if (filter.sender !== undefined && filter.sender !== message.sender) continue;
      try {
        handler(message);
      } catch {
        // a listener's failure is its own; the others still run
      }
    }
  }

  private reply(call: DBusMessage, signature: string, body: unknown[]): void {
    if (noReplyExpected(call)) return;
    try {
      this.send({
        type: METHOD_RETURN,
        replySerial: call.serial,
        destination: call.sender,
        ...(signature ? { signature, body } : {}),
      });
    } catch (error) {
      // A value that does not fit its signature is our bug; the caller still gets an answer.
      this.replyError(
        call,
        'org.freedesktop.DBus.Error.Failed',
        `cannot encode the reply: ${(error as Error).message}`,
      );
    }
  }

  private replyError(call: DBusMessage, name: string, text: string): void {
    if (noReplyExpected(call)) return;
    try {
      this.send({
        type: ERROR,
        replySerial: call.serial,
        destination: call.sender,
        errorName: name,
        signature: 's',
        body: [text],
      });
    } catch {
      // the connection is gone
    }
  }

  private serve(call: DBusMessage): void {
    const path = call.path ?? '';
    const byName = this.objects.get(path);
    const args = call.body ?? [];
    if (call.interface === 'org.freedesktop.DBus.Introspectable' && call.member === 'Introspect') {
      return this.reply(call, 's', [this.introspect(path)]);
    }
    if (call.interface === 'org.freedesktop.DBus.Peer') {
      if (call.member === 'Ping') return this.reply(call, '', []);
      return this.replyError(call, 'org.freedesktop.DBus.Error.UnknownMethod', `no method ${call.member}`);
    }
    if (!byName) {
      return this.replyError(call, 'org.freedesktop.DBus.Error.UnknownObject', `no object at ${path}`);
    }
    if (call.interface === 'org.freedesktop.DBus.Properties') return this.serveProperties(call, byName, args);
    const candidates = call.interface ? [byName.get(call.interface)] : [...byName.values()];
    const iface = candidates.find((i) => i && Object.hasOwn(i.methods, call.member ?? ''));
    if (!iface) {
      return this.replyError(
        call,
        call.interface && !byName.has(call.interface)
          ? 'org.freedesktop.DBus.Error.UnknownInterface'
          : 'org.freedesktop.DBus.Error.UnknownMethod',
        `no method ${call.interface ?? ''}.${call.member ?? ''} at ${path}`,
      );
    }
    const method = iface.methods[call.member!];
    if ((call.signature ?? '') !== method.in) {
      return this.replyError(
        call,
        'org.freedesktop.DBus.Error.InvalidArgs',
        `${call.member} takes '${method.in}', not '${call.signature ?? ''}'`,
      );
    }
    Promise.resolve()
      .then(() => method.handler(args, call))
      .then(
        (body) => this.reply(call, method.out, body),
        (error: unknown) =>
          this.replyError(
            call,
            error instanceof DBusError ? error.dbusName : 'org.freedesktop.DBus.Error.Failed',
            error instanceof Error ? error.message : String(error),
          ),
      );
  }

  private serveProperties(call: DBusMessage, byName: Map<string, ExportedInterface>, args: unknown[]): void {
    const iface = typeof args[0] === 'string' ? byName.get(args[0]) : undefined;
    if (call.member === 'GetAll' && call.signature === 's') {
      if (!iface) return this.reply(call, 'a{sv}', [[]]);
      const all = Object.entries(iface.properties).map(([key, p]) => [key, [p.signature, p.get()]]);
      return this.reply(call, 'a{sv}', [all]);
    }
    if (call.member === 'Get' && call.signature === 'ss') {
      const property = iface && typeof args[1] === 'string' ? iface.properties[args[1]] : undefined;
      if (!property || !Object.hasOwn(iface!.properties, args[1] as string)) {
        return this.replyError(call, 'org.freedesktop.DBus.Error.UnknownProperty', `no property ${String(args[1])}`);
      }
      return this.reply(call, 'v', [[property.signature, property.get()]]);
    }
    if (call.member === 'Set') {
      return this.replyError(call, 'org.freedesktop.DBus.Error.PropertyReadOnly', 'these properties are read-only');
    }
    return this.replyError(call, 'org.freedesktop.DBus.Error.UnknownMethod', `no method ${call.member}`);
  }

  private introspect(path: string): string {
    const lines = [
      '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"',
      ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">',
      '<node>',
    ];
    const args = (signature: string, direction?: 'in' | 'out') =>
      splitSignature(signature).map(
        (type) => `      <arg type="${type}"${direction ? ` direction="${direction}"` : ''}/>`,
      );
    for (const iface of this.objects.get(path)?.values() ?? []) {
      lines.push(`  <interface name="${iface.name}">`);
      for (const [name, method] of Object.entries(iface.methods)) {
        lines.push(
          `    <method name="${name}">`,
          ...args(method.in, 'in'),
          ...args(method.out, 'out'),
          '    </method>',
        );
      }
      for (const [name, signature] of Object.entries(iface.signals)) {
        lines.push(`    <signal name="${name}">`, ...args(signature), '    </signal>');
      }
      for (const [name, property] of Object.entries(iface.properties)) {
        lines.push(`    <property name="${name}" type="${property.signature}" access="read"/>`);
      }
      lines.push('  </interface>');
    }
    if (this.objects.has(path)) {
      lines.push('  <interface name="org.freedesktop.DBus.Introspectable"><method name="Introspect">');
      lines.push('    <arg type="s" direction="out"/></method></interface>');
      lines.push('  <interface name="org.freedesktop.DBus.Properties">');
      lines.push('    <method name="Get"><arg type="s" direction="in"/><arg type="s" direction="in"/>');
      lines.push('      <arg type="v" direction="out"/></method>');
      lines.push(
        '    <method name="GetAll"><arg type="s" direction="in"/><arg type="a{sv}" direction="out"/></method>',
      );
      lines.push('  </interface>');
    }
    const prefix = path === '/' ? '/' : `${path}/`;
    const children = new Set<string>();
    for (const other of this.objects.keys()) {
      if (other !== path && other.startsWith(prefix)) children.add(other.slice(prefix.length).split('/')[0]);
    }
    for (const child of children) lines.push(`  <node name="${child}"/>`);
    lines.push('</node>');
    return lines.join('\n');
  }
}

function matchRule(filter: SignalFilter): string {
  const parts = [`type='signal'`, `interface='${filter.interface}'`];
  if (filter.member) parts.push(`member='${filter.member}'`);
  if (filter.path) parts.push(`path='${filter.path}'`);
  if (filter.sender) parts.push(`sender='${filter.sender}'`);
  return parts.join(',');
}

/** A parsed type signature. */
export interface SignatureNode {
  readonly type: string;
  readonly children: readonly SignatureNode[];
}

/** Parses a D-Bus signature into single complete types. */
export function parseSignature(signature: string): SignatureNode[] {
  let at = 0;
  const one = (): SignatureNode => {
    const c = signature[at++];
    if (c === undefined) throw new Error(`truncated signature '${signature}'`);
    if (c === 'a') return { type: 'a', children: [one()] };
    if (c === '(' || c === '{') {
      const close = c === '(' ? ')' : '}';
      const children: SignatureNode[] = [];
      while (signature[at] !== close) {
        if (at >= signature.length) throw new Error(`unbalanced signature '${signature}'`);
        children.push(one());
      }
      at++;
      return { type: c, children };
    }
    return { type: c, children: [] };
  };
  const result: SignatureNode[] = [];
  while (at < signature.length) result.push(one());
  return result;
}

export function signatureText(node: SignatureNode): string {
  if (node.type === 'a') return `a${signatureText(node.children[0])}`;
  if (node.type === '(') return `(${node.children.map(signatureText).join('')})`;
  if (node.type === '{') return `{${node.children.map(signatureText).join('')}}`;
  return node.type;
}

function splitSignature(signature: string): string[] {
  return parseSignature(signature).map(signatureText);
}

const fromNativeTree = (tree: NativeSignatureTree): SignatureNode => ({
  type: tree.type,
  children: tree.child.map(fromNativeTree),
});

/**
 * A received value as plain JavaScript, guided by its signature: variants unwrapped, dictionaries as
 * objects, structs as arrays.
 */
export function plain(signature: string | SignatureNode, value: unknown): unknown {
  const node = typeof signature === 'string' ? parseSignature(signature)[0] : signature;
  switch (node.type) {
    case 'v': {
      const received = fromNativeVariant(value);
      return plain(fromNativeTree(received.tree), received.value);
    }
    case 'a': {
      const item = node.children[0];
      const items = value as unknown[];
      if (item.type === '{') {
        return Object.fromEntries(
          items.map((entry) => {
            const [k, v] = entry as [unknown, unknown];
            return [plain(item.children[0], k), plain(item.children[1], v)];
          }),
        );
      }
      return items.map((entry) => plain(item, entry));
    }
    case '(':
      return (value as unknown[]).map((field, i) => plain(node.children[i], field));
    default:
      return value;
  }
}
