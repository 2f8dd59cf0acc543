import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Node, type ParseError, findNodeAtLocation, parseTree, printParseErrorCode } from 'jsonc-parser';
import {
  DevgateError,
  Errors,
  type ModuleReference,
  PACKAGE_NAME,
  isPathSpecifier,
  isValidDomainName,
  readCheckedFile,
} from '@devgate/core';
import { defaultLibvirtUri } from '@devgate/backend-libvirt';
import { type DomainRegistryData, EMPTY_REGISTRY, parseRegistry } from '@devgate/backend-qemu';

/** Where a backend domain's devices come from. */
export type BackendSource =
  { readonly source: 'local' } | { readonly recording: string } | { readonly sysroot: string } | AgentBackend;

/**
 * A backend VM read through its devgate-agent (ADR 0008): the host sides of its control port and of
 * its export ports (Unix sockets of the VM's QEMU).
 */
export interface AgentBackend {
  readonly agent: string;
  readonly exports: Readonly<Record<string, string>>;
}

/** Read from a file, its paths are beside the file when written relatively (docs/configuration.md). */
export interface DaemonConfig {
  /** The read-only API socket; state-changing requests go to `<socket>.rw` (see ADR 0004). */
  readonly socket: string;
  readonly stateDir: string;
  /** The domain registry (VMs and their QMP sockets). */
  readonly domains?: string;
  readonly backends: Readonly<Record<string, BackendSource>>;
  readonly access: {
    /** Group that may use the read-only socket (mode 0660). */
    readonly readGroup?: string;
    /** Users and groups that may change state (the `.rw` socket, by ACL); none by default: only root. */
    readonly users: readonly string[];
    readonly groups: readonly string[];
  };
  /** An unanswered ask is denied after this long. */
  readonly askTimeoutSeconds: number;
  /** USB authorization of this host's devices, with USBGuard's rule language (docs/usb.md). */
  readonly usbPolicy?: {
    readonly rules: string;
    readonly implicitTarget: 'allow' | 'block' | 'reject';
  };
  /**
   * libvirt URIs whose domains are frontends: libvirt's default (`LIBVIRT_DEFAULT_URI`, else
   * `qemu:///system`) unless `"defaultUri": false`, then `libvirt.uris` (e.g. `qemu+ssh://host/system`).
   */
  readonly libvirt?: { readonly uris: readonly string[] };
  /**
   * Driver packages to load besides the built-in ones: package names, found as Node finds an
   * installed package from the configuration file's directory, or paths (`./x`, `/x`) relative to it.
   * A package that cannot be loaded is refused (logged, and listed by `devgate drivers`); the others run.
   */
  readonly modules?: readonly ModuleReference[];
  /**
   * Where the input a backend VM's policy lets go is given, by backend: a VM devgate manages (Qubes'
   * input-proxy-target of a USB VM). Default dom0.
   */
  readonly inputTargets?: Readonly<Record<string, string>>;
  /**
   * How many days audit entries are kept (pruned at start and about once a day); `null`: for ever.
   * Absent: `AUDIT_KEEP_DAYS`.
   */
  readonly audit?: { readonly keepDays: number | null };
}

/** A year: what `audit.keepDays` is unless set. */
export const AUDIT_KEEP_DAYS = 365;
/** A century: a bound that catches a mistyped number (milliseconds, a date) rather than a wish. */
const MAX_AUDIT_KEEP_DAYS = 36_500;

export interface ConfigIssue {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  readonly message: string;
}

/** Defaults: the system paths as root, the user's runtime and state directories otherwise. */
export function defaultConfig(env: NodeJS.ProcessEnv = process.env): DaemonConfig {
  const root = process.getuid?.() === 0;
  const runtime = root ? '/run/devgate' : path.join(runtimeDir(env), 'devgate');
  const state = root
    ? '/var/lib/devgate'
    : path.join(env.XDG_STATE_HOME ?? path.join(os.homedir(), '.local', 'state'), 'devgate');
  return {
    socket: env.DEVGATE_SOCKET ?? path.join(runtime, 'devgate.sock'),
    stateDir: env.DEVGATE_STATE_DIR ?? state,
    backends: { dom0: { source: 'local' } },
    // The read group reads (devgate.sock); nobody but root changes state (.rw) unless configured.
    access: { readGroup: root ? 'devgate' : undefined, users: [], groups: [] },
    askTimeoutSeconds: 60,
    libvirt: { uris: [defaultLibvirtUri(env)] },
    audit: { keepDays: AUDIT_KEEP_DAYS },
  };
}

/**
 * $XDG_RUNTIME_DIR if absolute, else os.tmpdir(): the XDG spec says a relative one is to be ignored,
 * and an empty one put the socket relative to the working directory. The client's resolveSocket
 * (@devgate/client, which cannot import this) has the same check: keep the two alike.
 */
function runtimeDir(env: NodeJS.ProcessEnv): string {
  const dir = env.XDG_RUNTIME_DIR;
  return dir && path.isAbsolute(dir) ? dir : os.tmpdir();
}

const TOP_KEYS = new Set([
  'socket',
  'stateDir',
  'domains',
  'backends',
  'access',
  'askTimeoutSeconds',
  'usbPolicy',
  'libvirt',
  'modules',
  'inputTargets',
  'audit',
]);
const LIBVIRT_URI = /^[a-z][a-z0-9+]*:\/\/[^\s]{0,1000}$/i;
const ACCOUNT = /^[a-z_][a-z0-9_-]{0,31}\$?$/;

/** Every problem of a config file, each located at line:column. */
export function checkConfig(text: string, file: string): { config?: DaemonConfig; issues: ConfigIssue[] } {
  const issues: ConfigIssue[] = [];
  const at = (offset: number, message: string) => issues.push({ file, ...position(text, offset), message });
  const errors: ParseError[] = [];
  const tree = parseTree(text, errors, { allowTrailingComma: false, disallowComments: false });
  for (const error of errors) at(error.offset, `invalid JSON: ${printParseErrorCode(error.error)}`);
  if (!tree || errors.length > 0) return { issues };
  if (tree.type !== 'object') {
    at(tree.offset, 'the configuration must be a JSON object');
    return { issues };
  }
  const base = defaultConfig();
  const value = (node: Node | undefined) => (node ? nodeValue(node) : undefined);
  // A key given twice is refused: devgated would read the first, while jq, JSON.parse and most
  // readers of the file take the last, so an `access` appended to revoke a writer would not.
  for (const [offset, name] of duplicateKeys(tree)) at(offset, `'${name}' is set twice`);
  const known = (keyPath: string[], keys: readonly string[], shape: string) => {
    const node = keyPath.length === 0 ? tree : findNodeAtLocation(tree, keyPath);
    if (!node) return;
    if (node.type !== 'object') return at(node.offset, `${keyPath.join('.')} must be an object: ${shape}`);
    for (const property of node.children ?? []) {
      const key = property.children?.[0];
      // A misspelt key would leave its default (the read group, block) in force without a word.
      if (key && !keys.includes(String(key.value)))
        at(key.offset, `unknown setting '${[...keyPath, String(key.value)].join('.')}'`);
    }
  };
  known([], [...TOP_KEYS], '');
  known(['access'], ['readGroup', 'users', 'groups'], '{"readGroup": GROUP, "users": [...], "groups": [...]}');
  known(['usbPolicy'], ['rules', 'implicitTarget'], '{"rules": FILE, "implicitTarget": "block"}');
  known(['audit'], ['keepDays'], `{"keepDays": ${AUDIT_KEEP_DAYS}}`);
  const string = (keyPath: string[], fallback?: string): string | undefined => {
    const node = findNodeAtLocation(tree, keyPath);
    if (!node) return fallback;
    if (node.type !== 'string' || node.value === '') at(node.offset, `${keyPath.join('.')} must be a non-empty string`);
    return typeof node.value === 'string' ? node.value : fallback;
  };
  // Every path the file gives is read through here: beside the file, as sshd reads an included
  // one, since devgated's working directory is `/` under systemd. Absolute paths are kept.
  const configDir = path.dirname(path.resolve(file));
  const pathSetting = (keyPath: string[]): string | undefined => {
    const value = string(keyPath);
    return value === undefined ? undefined : path.resolve(configDir, value);
  };
  const socket = pathSetting(['socket']) ?? base.socket;
  const stateDir = pathSetting(['stateDir']) ?? base.stateDir;
  const domains = pathSetting(['domains']);

  const backends: Record<string, BackendSource> = {};
  const backendsNode = findNodeAtLocation(tree, ['backends']);
  if (backendsNode && backendsNode.type !== 'object') at(backendsNode.offset, 'backends must be an object');
  for (const property of backendsNode?.type === 'object' ? (backendsNode.children ?? []) : []) {
    const [keyNode, valueNode] = property.children ?? [];
    const name = String(keyNode.value);
    if (!isValidDomainName(name)) at(keyNode.offset, `invalid backend name '${name}'`);
    const source = value(valueNode) as Record<string, unknown> | undefined;
    if (source && source.source === 'local' && Object.keys(source).length === 1) backends[name] = { source: 'local' };
    else if (source && typeof source.recording === 'string' && Object.keys(source).length === 1) {
      backends[name] = { recording: pathSetting(['backends', name, 'recording'])! };
    } else if (source && typeof source.sysroot === 'string' && Object.keys(source).length === 1) {
      backends[name] = { sysroot: pathSetting(['backends', name, 'sysroot'])! };
    } else if (source && typeof source.agent === 'string' && isAgentBackend(source)) {
      const exports = Object.keys((source.exports ?? {}) as Record<string, string>).map((port) => [
        port,
        pathSetting(['backends', name, 'exports', port])!,
      ]);
      backends[name] = { agent: pathSetting(['backends', name, 'agent'])!, exports: Object.fromEntries(exports) };
    } else {
      at(
        valueNode.offset,
        `backend '${name}' must be {"source": "local"}, {"recording": FILE}, {"sysroot": DIR} or {"agent": SOCKET, "exports": {PORT: SOCKET}}`,
      );
    }
  }
  if (Object.values(backends).filter((b) => 'source' in b).length > 1) {
    at(backendsNode!.offset, 'only one backend can be this host ({"source": "local"})');
  }

  const accounts = (keyPath: string[]): string[] => {
    const node = findNodeAtLocation(tree, keyPath);
    if (!node) return [];
    if (node.type !== 'array') {
      at(node.offset, `${keyPath.join('.')} must be a list of names`);
      return [];
    }
    return (node.children ?? []).flatMap((item) => {
      if (item.type === 'string' && ACCOUNT.test(item.value)) return [item.value as string];
      at(item.offset, `${keyPath.join('.')}: '${String(item.value)}' is not a user or group name`);
      return [];
    });
  };
  const readGroup = string(['access', 'readGroup'], base.access.readGroup);
  const readGroupNode = findNodeAtLocation(tree, ['access', 'readGroup']);
  if (readGroupNode?.type === 'string' && readGroupNode.value !== '' && !ACCOUNT.test(readGroupNode.value))
    at(readGroupNode.offset, `access.readGroup: '${readGroupNode.value}' is not a group name`);
  const users = accounts(['access', 'users']);
  const groups = findNodeAtLocation(tree, ['access', 'groups']) ? accounts(['access', 'groups']) : base.access.groups;

  let askTimeoutSeconds = base.askTimeoutSeconds;
  const timeoutNode = findNodeAtLocation(tree, ['askTimeoutSeconds']);
  if (timeoutNode) {
    if (timeoutNode.type !== 'number' || !(timeoutNode.value > 0 && timeoutNode.value <= 86_400)) {
      at(timeoutNode.offset, 'askTimeoutSeconds must be a number of seconds between 0 and 86400');
    } else askTimeoutSeconds = timeoutNode.value;
  }
  let usbPolicy: DaemonConfig['usbPolicy'];
  const policyNode = findNodeAtLocation(tree, ['usbPolicy']);
  if (policyNode) {
    const rules = pathSetting(['usbPolicy', 'rules']);
    const targetNode = findNodeAtLocation(tree, ['usbPolicy', 'implicitTarget']);
    const target = targetNode?.value ?? 'block';
    if (!rules) at(policyNode.offset, 'usbPolicy needs "rules": the path of a USBGuard rules file');
    if (!['allow', 'block', 'reject'].includes(target)) {
      at(targetNode!.offset, 'usbPolicy.implicitTarget must be allow, block or reject');
    }
    if (rules) usbPolicy = { rules, implicitTarget: target };
  }
  let libvirt = base.libvirt;
  const libvirtNode = findNodeAtLocation(tree, ['libvirt']);
  if (libvirtNode && libvirtNode.type !== 'object') {
    at(libvirtNode.offset, 'libvirt must be an object: {"uris": [URI, ...], "defaultUri": true}');
  } else if (libvirtNode) {
    for (const property of libvirtNode.children ?? []) {
      const key = property.children?.[0];
      if (key && !['uris', 'defaultUri'].includes(String(key.value)))
        at(key.offset, `unknown setting 'libvirt.${key.value}'`);
    }
    const uris: string[] = [];
    const urisNode = findNodeAtLocation(tree, ['libvirt', 'uris']);
    if (urisNode && urisNode.type !== 'array') at(urisNode.offset, 'libvirt.uris must be a list of libvirt URIs');
    for (const item of urisNode?.type === 'array' ? (urisNode.children ?? []) : []) {
      if (item.type === 'string' && LIBVIRT_URI.test(item.value)) uris.push(item.value);
      else at(item.offset, `libvirt.uris: '${String(item.value)}' is not a libvirt URI (like qemu+ssh://host/system)`);
    }
    const defaultNode = findNodeAtLocation(tree, ['libvirt', 'defaultUri']);
    if (defaultNode && defaultNode.type !== 'boolean')
      at(defaultNode.offset, 'libvirt.defaultUri must be true or false');
    const useDefault = defaultNode?.value !== false;
    libvirt = { uris: [...new Set([...(useDefault ? (base.libvirt?.uris ?? []) : []), ...uris])] };
  }
  // Driver packages: names or paths, resolved from the configuration's directory when loaded (a
  // name is looked up in node_modules from there, so it is not a path to resolve here).
  const modules: ModuleReference[] = [];
  const modulesNode = findNodeAtLocation(tree, ['modules']);
  if (modulesNode && modulesNode.type !== 'array')
    at(modulesNode.offset, 'modules must be a list of driver packages: names or paths');
  for (const item of modulesNode?.type === 'array' ? (modulesNode.children ?? []) : []) {
    const specifier = item.value;
    if (
      item.type !== 'string' ||
      !(isPathSpecifier(specifier) || PACKAGE_NAME.test(specifier)) ||
      specifier.length > 1024
    ) {
      at(
        item.offset,
        `modules: '${String(specifier)}' is not a package name (like @acme/devgate-driver-serial) or a path (./x, /x)`,
      );
    } else if (modules.some((m) => m.specifier === specifier)) {
      at(item.offset, `modules: '${specifier}' is named twice`);
    } else modules.push({ specifier, from: configDir });
  }
  const inputTargets: Record<string, string> = {};
  const targetsNode = findNodeAtLocation(tree, ['inputTargets']);
  if (targetsNode && targetsNode.type !== 'object')
    at(targetsNode.offset, 'inputTargets must be an object: {"sys-usb": "work"}');
  for (const property of targetsNode?.type === 'object' ? (targetsNode.children ?? []) : []) {
    const [keyNode, valueNode] = property.children ?? [];
    if (!isValidDomainName(String(keyNode.value)))
      at(keyNode.offset, `invalid backend name '${String(keyNode.value)}'`);
    else if (valueNode?.type !== 'string' || !isValidDomainName(valueNode.value))
      at(valueNode?.offset ?? keyNode.offset, `inputTargets.${String(keyNode.value)} must be a domain name`);
    else inputTargets[String(keyNode.value)] = valueNode.value;
  }
  let audit = base.audit;
  const keepDaysNode = findNodeAtLocation(tree, ['audit', 'keepDays']);
  if (keepDaysNode?.type === 'null') audit = { keepDays: null };
  else if (keepDaysNode) {
    const days = keepDaysNode.value;
    if (keepDaysNode.type !== 'number' || !Number.isInteger(days) || days < 1 || days > MAX_AUDIT_KEEP_DAYS)
      at(
        keepDaysNode.offset,
        `audit.keepDays must be a whole number of days from 1 to ${MAX_AUDIT_KEEP_DAYS}, or null to keep every entry`,
      );
    else audit = { keepDays: days };
  }
  if (issues.length > 0) return { issues };
  return {
    issues,
    config: {
      socket,
      stateDir,
      domains,
      backends: Object.keys(backends).length > 0 ? backends : base.backends,
      access: { readGroup, users, groups },
      askTimeoutSeconds,
      usbPolicy,
      libvirt,
      ...(modules.length > 0 ? { modules } : {}),
      ...(Object.keys(inputTargets).length > 0 ? { inputTargets } : {}),
      audit,
    },
  };
}

/**
 * Reads and checks a config file; the first problem becomes a coded error naming file:line:column.
 * The file says who may change state and which code devgated loads (`modules`), as root: one that
 * another user could write, or replace in its directory, is refused, as sshd's StrictModes does.
 */
export function loadConfig(file?: string): DaemonConfig {
  if (!file) return defaultConfig();
  const { config, issues } = checkConfig(readTrustedFile(file), file);
  if (!config) {
    const first = issues[0];
    throw Errors.configInvalid({ location: `${first.file}:${first.line}:${first.column}`, reason: first.message });
  }
  return config;
}

export function formatIssue(issue: ConfigIssue): string {
  return `${issue.file}:${issue.line}:${issue.column}: ${issue.message}`;
}

/**
 * Refuses (DG_CONFIG_INVALID) a file devgated trusts as root that a user other than root and its own
 * could change, as sshd's StrictModes does: its configuration, the USB rules, the domain registry
 * (which QMP sockets and agents it talks to). `opened`, the file as the caller opened it, is what is
 * checked, so that what is checked is what is read; anything but a regular file is refused too. A
 * file not there yet is checked where it would be created: whoever may create it chooses what it says.
 */
export function requireTrustedFile(file: string, opened?: fs.Stats): void {
  let unsafe: string | undefined;
  try {
    unsafe = untrustedReason(file, opened);
  } catch (error) {
    throw Errors.configInvalid({ location: file, reason: (error as Error).message });
  }
  if (unsafe)
    throw Errors.configInvalid({
      location: file,
      reason: unsafe,
      // Who may write it is what is wrong, not what it says (a registry is no configuration either).
      hint: `make it root's and writable by root alone, and its directory too (chown root; chmod go-w)`,
    });
}

/** A FIFO or a device node is never a configuration: reading one waits, or never ends. */
const NOT_REGULAR = 'not a regular file';

/** The text of a file devgated trusts as root, once `requireTrustedFile` accepted the file opened. */
export function readTrustedFile(file: string): string {
  try {
    return readCheckedFile(file, (opened) => requireTrustedFile(file, opened));
  } catch (error) {
    throw refusal(file, error);
  }
}

/**
 * The domain registry as devgated reads it, at start and at every re-read while it runs: through
 * `readTrustedFile`, so a registry made writable by others after the start is refused
 * (DG_CONFIG_INVALID) as it would have been then. Not there: empty, if nobody else could create it.
 */
export function readTrustedRegistry(file: string): DomainRegistryData {
  let text: string;
  try {
    text = readCheckedFile(file, (opened) => requireTrustedFile(file, opened));
  } catch (error) {
    // What the open found, not a second look: a registry renamed into place since (`lab up`) is
    // read next time, as a change of the file, rather than refused now.
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw refusal(file, error);
    requireTrustedFile(file);
    return EMPTY_REGISTRY;
  }
  return parseRegistry(text, file);
}

/**
 * A configuration's text as `devgate config check` and `devgated --check-config` read it: any file
 * their user may read (one is checked before it is installed; devgated's own trust check is
 * `loadConfig`'s), but only a regular file, opened as `readTrustedFile` opens it: a FIFO is refused
 * at once, not waited on.
 */
export function readConfigFile(file: string): string {
  try {
    return readCheckedFile(file, (opened) => {
      if (!opened.isFile()) throw Errors.configInvalid({ location: file, reason: NOT_REGULAR });
    });
  } catch (error) {
    throw refusal(file, error);
  }
}

/** A file that cannot be read as the refusal it is, saying why (its path is the message's start). */
function refusal(file: string, error: unknown): DevgateError {
  if (error instanceof DevgateError) return error;
  const { code, message } = error as NodeJS.ErrnoException;
  // `EACCES: permission denied, open '/etc/devgate/domains.json'`: the middle is what happened.
  const what = code && /^[A-Z]+: ([^,]+)/.exec(message)?.[1];
  return Errors.configInvalid({ location: file, reason: what ? `cannot read it: ${what} (${code})` : message });
}

function untrustedReason(file: string, opened: fs.Stats | undefined): string | undefined {
  const stat = opened ?? fs.statSync(file, { throwIfNoEntry: false });
  const directory = path.dirname(path.resolve(file));
  if (stat) {
    // Said first: who may write a FIFO or a directory is beside the point.
    if (!stat.isFile()) return NOT_REGULAR;
    return writableByOthers(stat, 'the file') ?? writableByOthers(fs.statSync(directory), 'its directory');
  }
  // The nearest directory on its path that exists: the missing ones could be made there.
  let parent = directory;
  let parentStat = fs.statSync(parent, { throwIfNoEntry: false });
  while (!parentStat && path.dirname(parent) !== parent) {
    parent = path.dirname(parent);
    parentStat = fs.statSync(parent, { throwIfNoEntry: false });
  }
  const where = parent === directory ? 'its directory' : `${parent}, where it would be created,`;
  return parentStat && writableByOthers(parentStat, where, true);
}

/**
 * Why a user other than root and this process's own could change this file or directory, if one
 * could: another owner, or group or other write (a sticky directory, like /tmp, keeps others from
 * replacing a file they do not own, not from creating one that is not there).
 */
function writableByOthers(stat: fs.Stats, what: string, creating = false): string | undefined {
  const uid = process.geteuid?.() ?? 0;
  const mode = (stat.mode & 0o7777).toString(8).padStart(4, '0');
  if (stat.uid !== 0 && stat.uid !== uid) return `${what} is owned by uid ${stat.uid}, neither root nor uid ${uid}`;
  const sticky = stat.isDirectory() && (stat.mode & 0o1000) !== 0 && !creating;
  if ((stat.mode & 0o022) === 0 || sticky) return undefined;
  return creating
    ? `it does not exist, and ${what} is writable by other users, who could create it (mode ${mode})`
    : `${what} is writable by other users (mode ${mode})`;
}

function isAgentBackend(source: Record<string, unknown>): boolean {
  const keys = Object.keys(source);
  const exports = source.exports;
  return (
    keys.every((key) => key === 'agent' || key === 'exports') &&
    source.agent !== '' &&
    (exports === undefined ||
      (typeof exports === 'object' &&
        exports !== null &&
        !Array.isArray(exports) &&
        Object.entries(exports).every(
          ([port, file]) => /^[a-z0-9][a-z0-9._-]{0,63}$/.test(port) && typeof file === 'string' && file !== '',
        )))
  );
}

/** Every key an object of the tree has already had, with its offset and path. */
function duplicateKeys(node: Node, keyPath: readonly string[] = []): [number, string][] {
  const found: [number, string][] = [];
  const seen = new Set<string>();
  for (const child of node.children ?? []) {
    if (node.type === 'object') {
      const [key, value] = child.children ?? [];
      const name = String(key?.value);
      if (seen.has(name)) found.push([key.offset, [...keyPath, name].join('.')]);
      seen.add(name);
      if (value) found.push(...duplicateKeys(value, [...keyPath, name]));
    } else found.push(...duplicateKeys(child, keyPath));
  }
  return found;
}

function nodeValue(node: Node): unknown {
  switch (node.type) {
    case 'object':
      return Object.fromEntries((node.children ?? []).map((p) => [p.children![0].value, nodeValue(p.children![1])]));
    case 'array':
      return (node.children ?? []).map(nodeValue);
    default:
      return node.value;
  }
}

function position(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return { line, column: offset - before.lastIndexOf('\n') };
}
