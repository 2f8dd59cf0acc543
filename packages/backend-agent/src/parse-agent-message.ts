/**
 * The parser of everything a devgate-agent sends: untrusted input from a VM that may be compromised
 * by the very device it handles. Each line is checked against the protocol's schema, exactly: known
 * keys only, every string bounded and free of NUL, device paths and names that are safe to join
 * under a sysfs root, attribute names from the protocol's list for the record's subsystem. Anything
 * else is an `AgentViolation`, which cuts the agent off.
 *
 * What passes is still untrusted text: the drivers sanitize device strings, as they do for any
 * backend. Nothing here can name a backend, a port or an attachment: the schema has no place for one.
 */
import { HostTree, type HostUsage, type RawDeviceRecord } from '@devgate/core';
import { isSafeDevpath, isSafeSubsystem } from '@devgate/host';
import {
  type AgentLimits,
  type AgentMessage,
  DEFAULT_LIMITS,
  EXPORT_ID,
  EXPORT_PORT_PREFIX,
  type ExportKind,
  FORWARD_ID,
  MAX_DEVPATH_CHARS,
  MAX_DEVPATH_SEGMENTS,
  MAX_FORWARD_NODES,
  MAX_INPUT_EVENTS,
  WIRE_ATTRIBUTES,
  WIRE_ENTRIES,
  WIRE_LINKS,
  type WireRecord,
  type WireUsage,
} from './protocol.js';

/** A message that breaks the protocol. `reason` is devgate's own text, safe to show and audit. */
export class AgentViolation extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'AgentViolation';
  }
}

type Json = Record<string, unknown>;

const PROPERTY_KEY = /^[A-Za-z0-9_.][A-Za-z0-9_.:-]{0,127}$/;
const ENTRY_NAME = /^[^/\0]{1,255}$/;
const MAJOR_MINOR = /^\d{1,4}:\d{1,7}$/;
const SWAP_NODE = /^\/dev\/[A-Za-z0-9._/-]{1,128}$/;
const EXPORT_PORT = new RegExp(`^${EXPORT_PORT_PREFIX.replaceAll('.', '\\.')}\\d{1,3}$`);
const AGENT_NAME = /^[\x20-\x7e]{1,64}$/;
const ERROR_CODE = /^[A-Z][A-Z0-9_]{0,39}$/;
const EXPORT_KINDS: readonly ExportKind[] = ['nbd', 'usbredir', 'input'];
/** evdev's bounds (linux/input-event-codes.h): EV_MAX, KEY_MAX; values are 32-bit signed. */
const EV_MAX = 0x1f;
const CODE_MAX = 0x2ff;

/** Parses one line. `limits` bound counts and sizes; the line's length was bounded by the reader. */
export function parseAgentMessage(line: string, limits: AgentLimits = DEFAULT_LIMITS): AgentMessage {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new AgentViolation('a line that is not JSON');
  }
  const message = object(value, 'the message');
  if (message.v !== 1) throw new AgentViolation(`protocol version ${describe(message.v)}, expected 1`);
  switch (message.type) {
    case 'hello': {
      keys(message, ['v', 'type', 'agent', 'exports', 'ports', 'busy'], 'hello');
      checkLength(line, limits.maxMessageBytes, 'hello');
      const agent = string(message.agent, 'hello.agent', 64);
      if (!AGENT_NAME.test(agent)) throw new AgentViolation('hello.agent: not a printable name');
      const exports = array(message.exports, 'hello.exports', 8).map((kind, i) => {
        if (!EXPORT_KINDS.includes(kind as ExportKind)) {
          throw new AgentViolation(`hello.exports[${i}]: unknown export kind ${describe(kind)}`);
        }
        return kind as ExportKind;
      });
      const ports = portList(message.ports, 'hello.ports');
      const busy = message.busy === undefined ? [] : portList(message.busy, 'hello.busy');
      return { v: 1, type: 'hello', agent, exports, ports, ...(busy.length ? { busy } : {}) } as AgentMessage;
    }
    case 'tree': {
      keys(message, ['v', 'type', 'seq', 'records', 'usage'], 'tree');
      checkLength(line, limits.maxTreeBytes, 'tree');
      const seq = integer(message.seq, 'tree.seq');
      const records = array(message.records, 'tree.records', limits.maxRecords);
      const seen = new Set<string>();
      const parsed = records.map((record, i) => {
        const wire = wireRecord(record, `tree.records[${i}]`, limits);
        if (seen.has(wire.devpath)) throw new AgentViolation(`tree.records[${i}]: device path listed twice`);
        seen.add(wire.devpath);
        return wire;
      });
      return { v: 1, type: 'tree', seq, records: parsed, usage: usage(message.usage, limits) };
    }
    case 'reply': {
      keys(message, ['v', 'type', 'id', 'ok', 'error'], 'reply');
      checkLength(line, limits.maxMessageBytes, 'reply');
      const id = integer(message.id, 'reply.id');
      if (typeof message.ok !== 'boolean') throw new AgentViolation('reply.ok: expected true or false');
      if (message.ok) {
        if (message.error !== undefined) throw new AgentViolation('reply: ok with an error');
        return { v: 1, type: 'reply', id, ok: true };
      }
      const error = object(message.error, 'reply.error');
      keys(error, ['code', 'message'], 'reply.error');
      const code = string(error.code, 'reply.error.code', 40);
      if (!ERROR_CODE.test(code)) throw new AgentViolation('reply.error.code: not an error code');
      return {
        v: 1,
        type: 'reply',
        id,
        ok: false,
        error: { code, message: string(error.message, 'reply.error.message', 1024) },
      };
    }
    case 'export-ended': {
      keys(message, ['v', 'type', 'export', 'reason', 'clean'], 'export-ended');
      checkLength(line, limits.maxMessageBytes, 'export-ended');
      const id = string(message.export, 'export-ended.export', 41);
      if (!EXPORT_ID.test(id)) throw new AgentViolation('export-ended.export: not an export id');
      if (typeof message.clean !== 'boolean') throw new AgentViolation('export-ended.clean: expected true or false');
      return {
        v: 1,
        type: 'export-ended',
        export: id,
        reason: string(message.reason, 'export-ended.reason', 256),
        clean: message.clean,
      };
    }
    case 'input': {
      keys(message, ['v', 'type', 'forward', 'events'], 'input');
      checkLength(line, limits.maxMessageBytes, 'input');
      const forward = forwardId(message.forward, 'input.forward');
      const events = array(message.events, 'input.events', MAX_INPUT_EVENTS).map((event, i) =>
        inputEvent(event, `input.events[${i}]`),
      );
      if (events.length === 0) throw new AgentViolation('input.events: empty');
      return { v: 1, type: 'input', forward, events };
    }
    case 'input-ended': {
      keys(message, ['v', 'type', 'forward', 'reason'], 'input-ended');
      checkLength(line, limits.maxMessageBytes, 'input-ended');
      return {
        v: 1,
        type: 'input-ended',
        forward: forwardId(message.forward, 'input-ended.forward'),
        reason: string(message.reason, 'input-ended.reason', 256),
      };
    }
    default:
      throw new AgentViolation(`unknown message type ${describe(message.type)}`);
  }
}

function wireRecord(value: unknown, at: string, limits: AgentLimits): WireRecord {
  const record = object(value, at);
  keys(record, ['devpath', 'subsystem', 'properties', 'attributes', 'entries', 'links'], at);
  const devpath = string(record.devpath, `${at}.devpath`, MAX_DEVPATH_CHARS);
  if (devpath.split('/').length - 1 > MAX_DEVPATH_SEGMENTS)
    throw new AgentViolation(`${at}.devpath: more than ${MAX_DEVPATH_SEGMENTS} segments`);
  if (!isSafeDevpath(devpath)) throw new AgentViolation(`${at}.devpath: not a safe /devices/... path`);
  // Empty: a device directory with no subsystem link (a bus's root, `/devices/pci0000:00`).
  const subsystem = string(record.subsystem, `${at}.subsystem`, 64);
  if (subsystem !== '' && !isSafeSubsystem(subsystem))
    throw new AgentViolation(`${at}.subsystem: not a subsystem name`);

  const properties = stringMap(record.properties, `${at}.properties`, limits.maxPropertiesPerRecord, limits, (key) =>
    PROPERTY_KEY.test(key),
  );
  const allowed = new Set(WIRE_ATTRIBUTES[subsystem] ?? []);
  const attributes =
    record.attributes === undefined
      ? undefined
      : stringMap(record.attributes, `${at}.attributes`, allowed.size, limits, (key) => allowed.has(key));
  let entries: Record<string, readonly string[]> | undefined;
  if (record.entries !== undefined) {
    const allowedEntries = new Set(WIRE_ENTRIES[subsystem] ?? []);
    const raw = object(record.entries, `${at}.entries`);
    entries = Object.create(null) as Record<string, readonly string[]>;
    for (const [name, list] of Object.entries(raw)) {
      if (!allowedEntries.has(name))
        throw new AgentViolation(`${at}.entries: '${printable(name)}' is not sent for ${subsystem}`);
      entries[name] = array(list, `${at}.entries.${name}`, 1024).map((entry, i) => {
        const text = string(entry, `${at}.entries.${name}[${i}]`, 255);
        if (!ENTRY_NAME.test(text) || text === '.' || text === '..') {
          throw new AgentViolation(`${at}.entries.${name}[${i}]: not a file name`);
        }
        return text;
      });
    }
  }
  const allowedLinks = new Set(WIRE_LINKS[subsystem] ?? []);
  const links =
    record.links === undefined
      ? undefined
      : stringMap(record.links, `${at}.links`, allowedLinks.size, limits, (key) => allowedLinks.has(key));
  return {
    devpath,
    subsystem,
    properties,
    ...(attributes ? { attributes } : {}),
    ...(entries ? { entries } : {}),
    ...(links ? { links } : {}),
  };
}

function forwardId(value: unknown, at: string): string {
  const id = string(value, at, 13);
  if (!FORWARD_ID.test(id)) throw new AgentViolation(`${at}: not a forward id`);
  return id;
}

/** `[node, type, code, value]`: a node index, then evdev's three numbers, each in its range. */
function inputEvent(value: unknown, at: string): readonly [number, number, number, number] {
  const event = array(value, at, 4);
  if (event.length !== 4) throw new AgentViolation(`${at}: expected [node, type, code, value]`);
  const [node, type, code, number] = event;
  const inRange = (x: unknown, min: number, max: number) =>
    Number.isInteger(x) && (x as number) >= min && (x as number) <= max;
  if (!inRange(node, 0, MAX_FORWARD_NODES - 1)) throw new AgentViolation(`${at}[0]: not a node index`);
  if (!inRange(type, 0, EV_MAX)) throw new AgentViolation(`${at}[1]: not an event type`);
  if (!inRange(code, 0, CODE_MAX)) throw new AgentViolation(`${at}[2]: not an event code`);
  if (!inRange(number, -0x80000000, 0x7fffffff)) throw new AgentViolation(`${at}[3]: not a 32-bit value`);
  return [node, type, code, number] as [number, number, number, number];
}

function usage(value: unknown, limits: AgentLimits): WireUsage {
  const raw = object(value, 'tree.usage');
  keys(raw, ['mounted', 'swaps', 'heldOpen', 'excludedLoops'], 'tree.usage');
  const list = (field: keyof WireUsage, pattern: RegExp) =>
    array(raw[field], `tree.usage.${field}`, limits.maxUsageEntries).map((entry, i) => {
      const text = string(entry, `tree.usage.${field}[${i}]`, 256);
      if (!pattern.test(text)) throw new AgentViolation(`tree.usage.${field}[${i}]: malformed`);
      return text;
    });
  return {
    mounted: list('mounted', MAJOR_MINOR),
    swaps: list('swaps', SWAP_NODE),
    ...(raw.heldOpen !== undefined ? { heldOpen: list('heldOpen', MAJOR_MINOR) } : {}),
    ...(raw.excludedLoops !== undefined ? { excludedLoops: list('excludedLoops', MAJOR_MINOR) } : {}),
  };
}

/** The host tree the drivers read, built from a checked tree message. */
export function hostTreeOf(records: readonly WireRecord[], usage: WireUsage): HostTree {
  const hostUsage: HostUsage = {
    mounted: new Set(usage.mounted),
    swaps: new Set(usage.swaps),
    ...(usage.heldOpen ? { heldOpen: new Set(usage.heldOpen) } : {}),
    ...(usage.excludedLoops ? { excludedLoops: new Set(usage.excludedLoops) } : {}),
  };
  return new HostTree(
    records.map((record) => new WireDevice(record)),
    hostUsage,
  );
}

/** A device record from an agent. Lookups go through own-property maps: `__proto__` is just a name. */
class WireDevice implements RawDeviceRecord {
  readonly devpath: string;
  readonly subsystem: string;
  readonly properties: Readonly<Record<string, string>>;
  private readonly attributes: ReadonlyMap<string, string>;
  private readonly listings: ReadonlyMap<string, readonly string[]>;
  private readonly symlinks: ReadonlyMap<string, string>;

  constructor(record: WireRecord) {
    this.devpath = record.devpath;
    this.subsystem = record.subsystem;
    this.properties = Object.freeze(Object.fromEntries(Object.entries(record.properties)));
    this.attributes = new Map(Object.entries(record.attributes ?? {}));
    this.listings = new Map(Object.entries(record.entries ?? {}));
    this.symlinks = new Map(Object.entries(record.links ?? {}));
  }

  attribute(name: string): string | undefined {
    return this.attributes.get(name);
  }

  entries(name: string): readonly string[] | undefined {
    return this.listings.get(name);
  }

  link(name: string): string | undefined {
    return this.symlinks.get(name);
  }
}

// -- schema helpers: each names the JSON path it checks

function object(value: unknown, at: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new AgentViolation(`${at}: expected an object, got ${describe(value)}`);
  }
  return value as Json;
}

function keys(value: Json, allowed: readonly string[], at: string): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) throw new AgentViolation(`${at}: unexpected field '${printable(key)}'`);
  }
}

function string(value: unknown, at: string, maxChars: number): string {
  if (typeof value !== 'string') throw new AgentViolation(`${at}: expected a string, got ${describe(value)}`);
  if (value.length > maxChars) throw new AgentViolation(`${at}: longer than ${maxChars} characters`);
  if (value.includes('\0')) throw new AgentViolation(`${at}: contains a NUL character`);
  return value;
}

function integer(value: unknown, at: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new AgentViolation(`${at}: expected a non-negative integer, got ${describe(value)}`);
  }
  return value;
}

function array(value: unknown, at: string, max: number): unknown[] {
  if (!Array.isArray(value)) throw new AgentViolation(`${at}: expected a list, got ${describe(value)}`);
  if (value.length > max) throw new AgentViolation(`${at}: more than ${max} entries`);
  return value;
}

function stringMap(
  value: unknown,
  at: string,
  max: number,
  limits: AgentLimits,
  keyOk: (key: string) => boolean,
): Record<string, string> {
  const raw = object(value, at);
  const entries = Object.entries(raw);
  if (entries.length > max) throw new AgentViolation(`${at}: more than ${max} entries`);
  const result = Object.create(null) as Record<string, string>;
  for (const [key, entry] of entries) {
    if (!keyOk(key)) throw new AgentViolation(`${at}: '${printable(key)}' is not allowed here`);
    result[key] = string(entry, `${at}.${printable(key)}`, limits.maxValueChars);
  }
  return result;
}

function portList(value: unknown, at: string): string[] {
  return array(value, at, 64).map((port, i) => {
    const text = string(port, `${at}[${i}]`, 64);
    if (!EXPORT_PORT.test(text)) throw new AgentViolation(`${at}[${i}]: not an export port name`);
    return text;
  });
}

function checkLength(line: string, max: number, what: string): void {
  if (line.length > max) throw new AgentViolation(`${what}: longer than ${max} bytes`);
}

/** A value named in a violation: its type, or a short printable form of a string. */
function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'string') return `'${printable(value)}'`;
  if (typeof value === 'object') return 'an object';
  return typeof value === 'number' && Number.isFinite(value) ? String(value) : typeof value;
}

/** Untrusted text quoted in a violation: bounded, ASCII letters and punctuation only. */
export function printable(text: string): string {
  const safe = text.slice(0, 40).replace(/[^\x20-\x7e]|['\\]/g, '?');
  return text.length > 40 ? `${safe}...` : safe;
}
