// @devgate/client: devgated's API from the client side (the CLI, the tray, scripts). One file with
// node:net only at run time: a CLI call loads it on every run, so it stays small and quick.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

/** A coded error as devgated reports it (`{error: {code, message, hint?}}`), or a transport failure. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
    readonly status?: number,
    /** The socket's error (`ECONNREFUSED`, ...) when the request got no answer. */
    readonly errno?: string,
  ) {
    super(message);
  }
}

/**
 * Nobody listens on the socket (ECONNREFUSED: a devgated that died left its socket file): the
 * request reached no daemon, so running the command in-process instead is safe.
 */
export function nobodyListens(error: unknown): boolean {
  return error instanceof ApiError && error.errno === 'ECONNREFUSED';
}

/** A pending question (devgated's asks). */
export interface AskJson {
  readonly id: string;
  readonly devclass: string;
  /** `backend:port` */
  readonly device: string;
  readonly deviceId: string;
  readonly description: string;
  readonly candidates: readonly string[];
  readonly reason: string;
  readonly createdAt: string;
  readonly expiresAt: string;
  readonly rememberable: boolean;
}

export interface AssignmentJson {
  readonly devclass: string;
  readonly backend: string;
  readonly portId: string;
  readonly deviceId: string;
  readonly frontend: string;
  readonly mode: string;
  readonly options: Readonly<Record<string, string>>;
}

/** A frontend's deny list: interface patterns it never receives by a manual attach (Qubes' devices_denied). */
export interface DenyListJson {
  readonly frontend: string;
  readonly patterns: readonly string[];
}

/** The answer to a change of a deny list: the list now, and what the change really added and removed. */
export interface DenyListChangeJson {
  readonly denyList: DenyListJson;
  readonly added: readonly string[];
  readonly removed: readonly string[];
}

/** An answer to an ask that devgated remembers as a rule (`devgate ask answer ID allow --remember`). */
export interface RememberedAnswerJson {
  /** Derived from the scope below: stable, for `POST /v1/answers/forget {"id"}`. */
  readonly id: string;
  readonly devclass: string;
  readonly backend: string;
  /** `*` for any port. */
  readonly portId: string;
  /** `*` for any device. */
  readonly deviceId: string;
  readonly frontend: string;
  readonly verdict: 'allow' | 'deny';
  readonly createdAt: string;
  readonly expiresAt?: string;
}

export interface AuditJson {
  readonly id: number;
  readonly at: string;
  readonly actor: string;
  readonly action: string;
  readonly devclass?: string | null;
  readonly backend?: string | null;
  readonly portId?: string | null;
  readonly deviceId?: string | null;
  readonly frontend?: string | null;
  readonly outcome: string;
  readonly code?: string | null;
  readonly reason?: string | null;
}

export interface HealthJson {
  readonly version: string;
  readonly sources: readonly { readonly id: string; readonly backend: string; readonly hotplug: string }[];
}

/** Where the system's devgated listens (devgated.socket, or devgated started as root). */
export const SYSTEM_SOCKET = '/run/devgate/devgate.sock';

export interface SocketLookup {
  /** Whose socket to look for; default this process's uid. */
  readonly uid?: number;
  /** Default SYSTEM_SOCKET. */
  readonly systemSocket?: string;
}

/**
 * The API socket: an explicit path; else $DEVGATE_SOCKET; else, for root, the system's socket; for
 * anyone else their own devgated's socket ($XDG_RUNTIME_DIR/devgate/devgate.sock) if a daemon
 * listens there, else the system's socket if it exists, else (nothing runs) their own.
 */
export function resolveSocket(
  explicit?: string,
  env: NodeJS.ProcessEnv = process.env,
  lookup: SocketLookup = {},
): string {
  if (explicit) return explicit;
  if (env.DEVGATE_SOCKET) return env.DEVGATE_SOCKET;
  const system = lookup.systemSocket ?? SYSTEM_SOCKET;
  if ((lookup.uid ?? process.getuid?.()) === 0) return system;
  const own = path.join(runtimeDir(env), 'devgate', 'devgate.sock');
  if (socketListening(own)) return own;
  if (daemonPresent(system)) return system;
  return own;
}

/**
 * $XDG_RUNTIME_DIR if absolute, else os.tmpdir(): the XDG spec says a relative one is to be ignored,
 * and an empty one put the socket relative to the working directory. devgated's defaultConfig
 * (@devgate/service, which this package may not import) has the same check: keep the two alike.
 */
function runtimeDir(env: NodeJS.ProcessEnv): string {
  const dir = env.XDG_RUNTIME_DIR;
  return dir && path.isAbsolute(dir) ? dir : os.tmpdir();
}

/**
 * Whether a process listens on the Unix socket `file`, not just whether the file is there (a killed
 * daemon leaves it behind). Linux lists listening sockets with the path they were bound to in
 * /proc/net/unix; read only when the socket file exists. Where that table cannot be read, the file
 * is taken as a listening daemon.
 */
export function socketListening(file: string): boolean {
  if (!daemonPresent(file)) return false;
  let table: string;
  try {
    table = fs.readFileSync('/proc/net/unix', 'utf8');
  } catch {
    return true;
  }
  const name = path.basename(file);
  const dir = realpathOr(path.dirname(path.resolve(file)));
  for (const line of table.split('\n')) {
    // Num: RefCount Protocol Flags Type St Inode Path; flag 0x10000 (__SO_ACCEPTCON) is "listening".
    const entry = /^[0-9a-f]+: [0-9A-F]{8} [0-9A-F]{8} ([0-9A-F]{8}) [0-9A-F]{4} [0-9A-F]{2} +\d+ (\/.*)$/.exec(line);
    if (!entry || (parseInt(entry[1], 16) & 0x10000) === 0 || path.basename(entry[2]) !== name) continue;
    if (realpathOr(path.dirname(entry[2])) === dir) return true;
  }
  return false;
}

function realpathOr(dir: string): string {
  try {
    return fs.realpathSync(dir);
  } catch {
    return dir;
  }
}

/**
 * Whether a daemon seems to be there (a socket file exists), without connecting: a request still
 * may fail, with `nobodyListens` when the file is all that is left of one.
 */
export function daemonPresent(socket: string): boolean {
  return fs.statSync(socket, { throwIfNoEntry: false })?.isSocket() ?? false;
}

/** `uid=1000(alice)`: who this process is, as the audit log records a client's claim (ADR 0004). */
export function localActor(): string {
  const uid = process.getuid?.() ?? -1;
  let name = '';
  try {
    name = os.userInfo().username;
  } catch {
    // no passwd entry for this uid
  }
  return name ? `uid=${uid}(${name})` : `uid=${uid}`;
}

export interface CallOptions {
  readonly timeoutMs?: number;
  /** Who is asking, for the audit log of state changes. Default: `localActor()`. */
  readonly actor?: string;
}

/**
 * One request to devgated. Plain HTTP/1.1 over `net` rather than `node:http`: a CLI call makes one
 * request, and http's lazily loaded machinery costs more than the whole exchange (see the bench).
 * GET goes to the read-only socket, state changes to `<socket>.rw`, which only allowed users can open.
 */
export function callApi<T>(
  socket: string,
  method: 'GET' | 'POST',
  route: string,
  body?: unknown,
  options: CallOptions = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 120_000;
  const socketPath = method === 'GET' ? socket : `${socket}.rw`;
  const payload = body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body));
  const head = [
    `${method} ${route} HTTP/1.1`,
    'host: devgated',
    'connection: close',
    ...(method === 'GET' ? [] : [`x-devgate-actor: ${options.actor ?? localActor()}`]),
    ...(body === undefined ? [] : ['content-type: application/json', `content-length: ${payload.length}`]),
  ];
  return new Promise((resolve, reject) => {
    const connection = net.connect(socketPath);
    const chunks: Buffer[] = [];
    connection.setTimeout(timeoutMs, () => connection.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    // Write without half-closing: Node's HTTP server drops a request whose client ends its side;
    // `connection: close` makes the server close once it has answered.
    connection.on('connect', () =>
      connection.write(Buffer.concat([Buffer.from(head.join('\r\n') + '\r\n\r\n'), payload])),
    );
    connection.on('data', (chunk: Buffer) => chunks.push(chunk));
    connection.on('end', () => {
      const response = parseResponse(Buffer.concat(chunks));
      let parsed: { error?: { code: string; message: string; hint?: string } } & Record<string, unknown>;
      try {
        parsed = JSON.parse(response.body.toString('utf8'));
      } catch {
        return reject(new ApiError('DG_DAEMON_UNAVAILABLE', `devgated sent a malformed answer (${response.status})`));
      }
      if (parsed.error) {
        const { code, message, hint } = parsed.error;
        return reject(new ApiError(String(code), String(message), hint, response.status));
      }
      resolve(parsed as T);
    });
    connection.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'EACCES' && method !== 'GET') {
        reject(
          new ApiError(
            'DG_NOT_ALLOWED',
            `you may not change devgate's state (no access to ${socketPath})`,
            "an administrator can add you to the 'access' users or groups of devgated's configuration",
          ),
        );
      } else {
        reject(
          new ApiError(
            'DG_DAEMON_UNAVAILABLE',
            `devgated is not reachable at ${socketPath}: ${error.message}`,
            'start it (systemctl start devgated), or pass --socket PATH / set DEVGATE_SOCKET',
            undefined,
            error.code,
          ),
        );
      }
    });
  });
}

/** Status and body of an HTTP/1.1 response read to the end (`connection: close`). */
export function parseResponse(raw: Buffer): { status: number; body: Buffer } {
  const split = raw.indexOf('\r\n\r\n');
  if (split < 0) return { status: 0, body: Buffer.alloc(0) };
  const lines = raw.subarray(0, split).toString('latin1').split('\r\n');
  const status = Number(lines[0].split(' ')[1]);
  let body = raw.subarray(split + 4);
  if (lines.some((line) => /^transfer-encoding:\s*chunked/i.test(line))) {
    const parts: Buffer[] = [];
    for (let at = 0; at < body.length;) {
      const eol = body.indexOf('\r\n', at);
      const size = parseInt(body.subarray(at, eol).toString('latin1'), 16);
      if (!(size > 0)) break;
      parts.push(body.subarray(eol + 2, eol + 2 + size));
      at = eol + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  }
  return { status, body };
}
