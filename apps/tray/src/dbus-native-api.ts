/**
 * The part of @homebridge/dbus-native that devgate uses, typed: only the library's documented public
 * API. That is the README's low-level connection, `createConnection(options)` (a connection with one
 * method, `message(msg)`, and the events `connect`, `message` and `error`; options as for
 * `createClient`), the `messageType` constants and the message fields the README lists, plus the
 * `stream` (a net.Socket) its typings declare on a connection, to close it and see it close.
 * The bus object's internals (its serial counter, reply table, name and message dispatcher) are not
 * used: the caller numbers its own messages and routes their replies (dbus.ts).
 *
 * The library's typings declare neither createConnection nor messageType, hence the cast.
 */
import * as dbusNative from '@homebridge/dbus-native';
import { type BusConnection } from '@homebridge/dbus-native';

/** A message as the README describes it (type, path, interface, ... replySerial), sent or received. */
export interface DBusMessage {
  type?: number;
  serial?: number;
  replySerial?: number;
  path?: string;
  interface?: string;
  member?: string;
  destination?: string;
  sender?: string;
  signature?: string;
  errorName?: string;
  body?: unknown[];
}

/** A connection to a bus: authenticated (then `connect`), but no Hello sent; messages before `connect` are queued. */
export interface NativeConnection extends BusConnection {
  /** Sends one message; its `serial` must be set. Throws when the body does not fit the signature. */
  message(message: DBusMessage): void;
}

const native = dbusNative as unknown as {
  createConnection(options: { busAddress: string }): NativeConnection;
  messageType: { methodCall: number; methodReturn: number; error: number; signal: number };
};

export const MessageType = {
  METHOD_CALL: native.messageType.methodCall,
  METHOD_RETURN: native.messageType.methodReturn,
  ERROR: native.messageType.error,
  SIGNAL: native.messageType.signal,
} as const;

/** Opens a connection to the bus at `busAddress` (a D-Bus address such as `unix:path=...`). */
export function createConnection(busAddress: string): NativeConnection {
  return native.createConnection({ busAddress });
}

/** Closes the connection's socket (what the library's `end()` does; the typings declare only `stream`). */
export function endConnection(connection: NativeConnection): void {
  try {
    connection.stream.end();
  } catch {
    // already closed
  }
}

/**
 * Whether the sender asked for no reply (header flag NO_REPLY_EXPECTED). The README does not list
 * the `flags` field of a received message, so this one read relies on the library's message object
 * as it is (it copies the header's flags byte there); without it we would only answer calls nobody
 * waits for, which the bus drops.
 */
export function noReplyExpected(message: DBusMessage): boolean {
  const flags = (message as { flags?: unknown }).flags;
  return typeof flags === 'number' && (flags & 1) !== 0;
}

/**
 * Variants. The README does not say how the library represents them, and there is no other way to
 * send or read one, so these two functions hold what its marshaller takes and its unmarshaller
 * gives: a variant to send is `[signature, value]`; a received one is `[[tree], [value]]`, the tree
 * being the parsed signature (`{ type, child: [...] }`).
 */
export function toNativeVariant(signature: string, value: unknown): [string, unknown] {
  return [signature, value];
}

/** The parsed signature of a received variant, as the library gives it. */
export interface NativeSignatureTree {
  readonly type: string;
  readonly child: readonly NativeSignatureTree[];
}

export function fromNativeVariant(received: unknown): { tree: NativeSignatureTree; value: unknown } {
  const [trees, values] = received as [NativeSignatureTree[], unknown[]];
  return { tree: trees[0], value: values[0] };
}
