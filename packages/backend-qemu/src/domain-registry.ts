/**
 * The domain registry: which QEMU domains exist and where their QMP sockets are. A JSON file,
 *
 *   { "dom0": "dom0", "domains": { "<name>": { "qmp": "/path/sock", "pid"?: n, "lab"?: true } },
 *     "backends"?: { "<name>": { "recording": "/path/recording" } } }
 *
 * `backends` are backend domains replayed from a recording (`devgate lab up sys-usb --recording F`):
 * a sys-usb holding recorded devices on a machine with no USB bus.
 *
 * read strictly (every mistake is DG_REGISTRY_INVALID naming the file and the JSON path of the bad
 * entry) and written atomically (temp file in the same directory, fsync, rename), so a reader never
 * sees half a file. Writers are not locked against each other: the last rename wins.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { DevgateError, Errors, isValidDomainName, readCheckedFile } from '@devgate/core';

export interface DomainEntry {
  /** Absolute path of the domain's QMP Unix socket. */
  readonly qmp: string;
  /** The QEMU process id, when devgate knows it. */
  readonly pid?: number;
  /** Started by `labUp`: devgate owns its life cycle. */
  readonly lab?: boolean;
  /** A backend VM whose devgate-agent devgated reads its devices through (a USB VM). */
  readonly agent?: AgentEndpoints;
}

/** Where a backend VM's agent is reached: host sides of its virtio-serial ports (Unix sockets of its QEMU). */
export interface AgentEndpoints {
  /** The control channel (port `org.devgate.agent`). */
  readonly control: string;
  /** Export port name -> its host-side socket, which a frontend's QEMU connects to. */
  readonly exports: Readonly<Record<string, string>>;
  /** Made by `devgate usbvm create` (and so removed by `devgate usbvm remove`). */
  readonly usbvm?: boolean;
}

export interface DomainRegistryData {
  /** The name the host itself goes by (Qubes' dom0). */
  readonly dom0: string;
  readonly domains: Readonly<Record<string, DomainEntry>>;
  /** Backend domains whose devices come from a recording. */
  readonly backends?: Readonly<Record<string, { readonly recording: string }>>;
}

export const EMPTY_REGISTRY: DomainRegistryData = Object.freeze({ dom0: 'dom0', domains: Object.freeze({}) });

/** `$DEVGATE_DOMAINS`, else `$XDG_STATE_HOME/devgate/domains.json`, else `~/.local/state/devgate/domains.json`. */
export function defaultRegistryFile(env: NodeJS.ProcessEnv = process.env): string {
  if (env['DEVGATE_DOMAINS']) return env['DEVGATE_DOMAINS'];
  // The XDG spec says to ignore a relative XDG_STATE_HOME.
  const stateHome = env['XDG_STATE_HOME'];
  const base = stateHome && isAbsolute(stateHome) ? stateHome : join(env['HOME'] || homedir(), '.local', 'state');
  return join(base, 'devgate', 'domains.json');
}

/** Parses and validates registry text; `file` only names the source in errors. */
export function parseRegistry(text: string, file: string): DomainRegistryData {
  const invalid = (path: string, reason: string) => Errors.registryInvalid({ file, path, reason });
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw invalid('$', `not valid JSON (${describeJsonError(text, error)})`);
  }
  if (!isObject(raw)) throw invalid('$', `expected an object, got ${typeName(raw)}`);
  rejectUnknownKeys(raw, ['dom0', 'domains', 'backends'], '$', invalid);

  const dom0 = raw['dom0'] ?? EMPTY_REGISTRY.dom0;
  if (typeof dom0 !== 'string') throw invalid('$.dom0', `expected a string, got ${typeName(dom0)}`);
  if (!isValidDomainName(dom0)) throw invalid('$.dom0', `invalid domain name '${dom0}'`);

  if (!('domains' in raw)) throw invalid('$.domains', 'missing (use {} for none)');
  const domains = raw['domains'];
  if (!isObject(domains)) throw invalid('$.domains', `expected an object, got ${typeName(domains)}`);

  const result: Record<string, DomainEntry> = {};
  for (const [name, entry] of Object.entries(domains)) {
    const path = `$.domains${jsonPathKey(name)}`;
    if (!isValidDomainName(name))
      throw invalid(path, `invalid domain name '${name}' (at most 31 characters: a letter, then [a-zA-Z0-9_.-])`);
    if (name === dom0) throw invalid(path, `'${name}' is the name of dom0`);
    if (!isObject(entry)) throw invalid(path, `expected an object, got ${typeName(entry)}`);
    rejectUnknownKeys(entry, ['qmp', 'pid', 'lab', 'agent'], path, invalid);
    const { qmp, pid, lab } = entry;
    if (qmp === undefined) throw invalid(`${path}.qmp`, 'missing (the path of the QMP socket)');
    if (typeof qmp !== 'string' || !isAbsolute(qmp))
      throw invalid(`${path}.qmp`, `expected an absolute path, got ${JSON.stringify(qmp)}`);
    if (pid !== undefined && !(Number.isSafeInteger(pid) && (pid as number) > 0)) {
      throw invalid(`${path}.pid`, `expected a positive integer, got ${JSON.stringify(pid)}`);
    }
    if (lab !== undefined && typeof lab !== 'boolean')
      throw invalid(`${path}.lab`, `expected true or false, got ${JSON.stringify(lab)}`);
    const agent = entry.agent === undefined ? undefined : parseAgentEndpoints(entry.agent, `${path}.agent`, invalid);
    result[name] = {
      qmp,
      ...(pid !== undefined && { pid: pid as number }),
      ...(lab !== undefined && { lab }),
      ...(agent && { agent }),
    };
  }
  const backends: Record<string, { recording: string }> = {};
  const rawBackends = raw['backends'] ?? {};
  if (!isObject(rawBackends)) throw invalid('$.backends', `expected an object, got ${typeName(rawBackends)}`);
  for (const [name, entry] of Object.entries(rawBackends)) {
    const path = `$.backends${jsonPathKey(name)}`;
    if (!isValidDomainName(name) || name === dom0 || name in result) {
      throw invalid(path, `'${name}' is not a free domain name`);
    }
    if (!isObject(entry)) throw invalid(path, `expected an object, got ${typeName(entry)}`);
    rejectUnknownKeys(entry, ['recording'], path, invalid);
    if (typeof entry.recording !== 'string' || !isAbsolute(entry.recording)) {
      throw invalid(`${path}.recording`, `expected an absolute path, got ${JSON.stringify(entry.recording)}`);
    }
    backends[name] = { recording: entry.recording };
  }
  return { dom0, domains: result, ...(Object.keys(backends).length > 0 ? { backends } : {}) };
}

/**
 * Reads the registry; a missing file is an empty registry. Opened without blocking and read only if
 * it is a regular file: a FIFO at its path would hang the reader (devgated, the CLI) for a writer.
 */
export function readRegistrySync(file: string = defaultRegistryFile()): DomainRegistryData {
  let text: string;
  try {
    text = readCheckedFile(file, (opened) => {
      if (!opened.isFile()) throw notRegularFile(file);
    });
  } catch (error) {
    return unreadable(file, error);
  }
  return parseRegistry(text, file);
}

/** `readRegistrySync` for the lab's asynchronous callers: the file is small, read at once. */
export async function readRegistry(file: string = defaultRegistryFile()): Promise<DomainRegistryData> {
  return readRegistrySync(file);
}

/** Validates, then replaces the file atomically. Creates the directory (mode 0700) if needed. */
export async function writeRegistry(file: string, data: DomainRegistryData): Promise<void> {
  const text = JSON.stringify(data, null, 2) + '\n';
  parseRegistry(text, file); // never write what we would refuse to read
  await fs.mkdir(dirname(file), { recursive: true, mode: 0o700 });
  // Same directory as the target, so rename() stays within one filesystem and is atomic.
  const temp = join(dirname(file), `.${randomBytes(6).toString('hex')}.domains.tmp`);
  try {
    const handle = await fs.open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(text);
      await handle.sync(); // the data reaches the disk before the rename publishes it
    } finally {
      await handle.close();
    }
    await fs.rename(temp, file);
  } catch (error) {
    await fs.rm(temp, { force: true });
    throw error;
  }
}

/** Read, change, write. Not safe against a concurrent writer in another process. */
export async function updateRegistry(
  file: string,
  change: (data: DomainRegistryData) => DomainRegistryData,
): Promise<DomainRegistryData> {
  const next = change(await readRegistry(file));
  await writeRegistry(file, next);
  return next;
}

/** The entry for `name`, or DG_NO_SUCH_DOMAIN. */
export function getDomain(data: DomainRegistryData, name: string, file: string): DomainEntry {
  const entry = Object.hasOwn(data.domains, name) ? data.domains[name] : undefined;
  if (!entry) throw Errors.noSuchDomain({ domain: name, file });
  return entry;
}

export function isRegistryError(error: unknown): error is DevgateError {
  return error instanceof DevgateError && error.code === Errors.registryInvalid.code;
}

// -- helpers

/** A FIFO or a device node is never a registry: reading one waits, or never ends. */
function notRegularFile(file: string): DevgateError {
  return Errors.registryInvalid({ file, path: '$', reason: 'not a regular file' });
}

/** A registry that is not there is empty; one that cannot be read is DG_REGISTRY_INVALID. */
function unreadable(file: string, error: unknown): DomainRegistryData {
  if (isRegistryError(error)) throw error;
  if ((error as NodeJS.ErrnoException).code === 'ENOENT') return EMPTY_REGISTRY;
  throw Errors.registryInvalid({ file, path: '$', reason: `unreadable (${(error as Error).message})` });
}

function parseAgentEndpoints(value: unknown, path: string, invalid: Invalid): AgentEndpoints {
  if (!isObject(value)) throw invalid(path, `expected an object, got ${typeName(value)}`);
  rejectUnknownKeys(value, ['control', 'exports', 'usbvm'], path, invalid);
  const socket = (v: unknown, at: string) => {
    if (typeof v !== 'string' || !isAbsolute(v))
      throw invalid(at, `expected an absolute path, got ${JSON.stringify(v)}`);
    return v;
  };
  const control = socket(value.control, `${path}.control`);
  if (!isObject(value.exports)) throw invalid(`${path}.exports`, `expected an object, got ${typeName(value.exports)}`);
  const exports: Record<string, string> = {};
  for (const [port, file] of Object.entries(value.exports)) {
    if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(port))
      throw invalid(`${path}.exports${jsonPathKey(port)}`, 'not a port name');
    exports[port] = socket(file, `${path}.exports${jsonPathKey(port)}`);
  }
  if (value.usbvm !== undefined && typeof value.usbvm !== 'boolean') {
    throw invalid(`${path}.usbvm`, `expected true or false, got ${JSON.stringify(value.usbvm)}`);
  }
  return { control, exports, ...(value.usbvm !== undefined && { usbvm: value.usbvm }) };
}

type Invalid = (path: string, reason: string) => DevgateError;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `${typeof value} ${JSON.stringify(value)}`;
}

function rejectUnknownKeys(value: Record<string, unknown>, known: readonly string[], path: string, invalid: Invalid) {
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) throw invalid(`${path}${jsonPathKey(key)}`, `unknown key (known: ${known.join(', ')})`);
  }
}

/** `.name` when that reads unambiguously, else `["na me"]`. */
function jsonPathKey(key: string): string {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`;
}

/**
 * "line L, column C: <V8's message>". Node 20's JSON.parse names a position for some errors only
 * ("Unexpected token '}', ... is not valid JSON" has none), so the offset comes from our own scan.
 */
function describeJsonError(text: string, error: unknown): string {
  const offset = findJsonErrorOffset(text);
  const before = text.slice(0, offset).split('\n');
  const line = before.length;
  const column = before[before.length - 1].length + 1;
  const message = error instanceof Error ? error.message : String(error);
  return `line ${line}, column ${column}: ${message}`;
}

/**
 * The offset of the first character that makes `text` invalid JSON (text.length when it ends too
 * soon). A bare recursive-descent scanner; only called after JSON.parse has already failed.
 */
export function findJsonErrorOffset(text: string): number {
  let i = 0;
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const fail = (): never => {
    throw i;
  };
  const literal = (word: string) => {
    for (const ch of word) {
      if (text[i] !== ch) fail();
      i++;
    }
  };
  const string = () => {
    if (text[i] !== '"') fail();
    i++;
    for (;;) {
      if (i >= text.length || text.charCodeAt(i) < 0x20) fail();
      if (text[i] === '"') return void i++;
      if (text[i] === '\\') {
        i++;
        if (text[i] === 'u') {
          for (let k = 0; k < 4; k++) {
            i++;
            if (!/^[0-9a-fA-F]$/.test(text[i] ?? '')) fail();
          }
        } else if (!'"\\/bfnrt'.includes(text[i] ?? 'x')) fail();
      }
      i++;
    }
  };
  const number = () => {
    const match = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
    if (!match) fail();
    i += match![0].length;
  };
  const value = (): void => {
    ws();
    const ch = text[i];
    if (ch === '{') {
      i++;
      ws();
      if (text[i] === '}') return void i++;
      for (;;) {
        ws();
        string();
        ws();
        if (text[i] !== ':') fail();
        i++;
        value();
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === '}') return void i++;
        else fail();
      }
    } else if (ch === '[') {
      i++;
      ws();
      if (text[i] === ']') return void i++;
      for (;;) {
        value();
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === ']') return void i++;
        else fail();
      }
    } else if (ch === '"') string();
    else if (ch === 't') literal('true');
    else if (ch === 'f') literal('false');
    else if (ch === 'n') literal('null');
    else number();
  };
  try {
    value();
    ws();
    return i < text.length ? i : text.length; // trailing garbage, or (unexpectedly) valid
  } catch (offset) {
    return Math.min(offset as number, text.length);
  }
}
