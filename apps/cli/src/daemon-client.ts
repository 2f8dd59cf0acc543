// The client side of devgated's API, and the quick path: the most common read-only commands
// answered from devgated with nothing loaded but this file, node:net and the formatters, so
// `devgate list` costs little more than starting Node. Anything else (or no daemon) falls through
// to the full CLI.
import * as net from 'node:net';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type DeviceJson } from '@devgate/core';
import type * as formats from './format.js';

export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

/** The API socket: --socket, $DEVGATE_SOCKET, then devgated's default for this user. */
export function resolveSocket(explicit?: string): string {
  if (explicit) return explicit;
  if (process.env.DEVGATE_SOCKET) return process.env.DEVGATE_SOCKET;
  if (process.getuid?.() === 0) return '/run/devgate/devgate.sock';
  return path.join(process.env.XDG_RUNTIME_DIR ?? os.tmpdir(), 'devgate', 'devgate.sock');
}

/** Whether a daemon seems to be there (a socket file exists); a request still may fail. */
export function daemonPresent(socket: string): boolean {
  return fs.statSync(socket, { throwIfNoEntry: false })?.isSocket() ?? false;
}

/**
 * One request to devgated. Plain HTTP/1.1 over `net` rather than `node:http`: a CLI call makes one
 * request, and http's lazily loaded machinery costs more than the whole exchange (see the bench).
 */
export function callApi<T>(
  socket: string,
  method: 'GET' | 'POST',
  route: string,
  body?: unknown,
  timeoutMs = 120_000,
): Promise<T> {
  // State changes go to the `.rw` socket, which only allowed users can open.
  const socketPath = method === 'GET' ? socket : `${socket}.rw`;
  const payload = body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body));
  const head = [
    `${method} ${route} HTTP/1.1`,
    'host: devgated',
    'connection: close',
    // Who is asking, for the audit log of state changes (a claim: see ADR 0004).
    ...(method === 'GET' ? [] : [`x-devgate-actor: ${actor()}`]),
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
      let parsed: { error?: { code: string; message: string; hint?: string } } & Record<string, unknown>;
      const response = parseResponse(Buffer.concat(chunks));
      try {
        parsed = JSON.parse(response.body.toString('utf8'));
      } catch {
        return reject(new ApiError('DG_DAEMON_UNAVAILABLE', `devgated sent a malformed answer (${response.status})`));
      }
      if (parsed.error) {
        const { code, message, hint } = parsed.error;
        return reject(new ApiError(code, message, hint, response.status));
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

function actor(): string {
  const uid = process.getuid?.() ?? -1;
  let name = '';
  try {
    name = os.userInfo().username;
  } catch {
    // no passwd entry for this uid
  }
  return name ? `uid=${uid}(${name})` : `uid=${uid}`;
}

type Formats = typeof formats;
type Plan = { path: string; render: (devices: DeviceJson[], formats: Formats) => string };

function plan(prog: string, argv: readonly string[]): Plan | undefined {
  if (prog === 'devgate') {
    if (argv[0] !== 'list') return undefined;
    const flags = new Set<string>();
    let devclass: string | undefined;
    for (let i = 1; i < argv.length; i++) {
      if (argv[i] === '--json' || argv[i] === '--all') flags.add(argv[i]);
      else if (argv[i] === '--class' && /^[a-z][a-z0-9-]*$/.test(argv[i + 1] ?? '')) devclass = argv[++i];
      else return undefined;
    }
    const query = new URLSearchParams();
    if (devclass) query.set('class', devclass);
    if (flags.has('--all')) query.set('all', 'true');
    return {
      path: `/v1/devices?${query}`,
      render: (devices, f) =>
        flags.has('--json')
          ? JSON.stringify(devices, null, 2) + '\n'
          : f.formatDevgateTable(devices, flags.has('--all')),
    };
  }
  const devclass = prog.startsWith('qvm-') && prog !== 'qvm-device' ? prog.slice(4) : undefined;
  if (!devclass || argv.length > 1) return undefined;
  const path = `/v1/devices?class=${devclass}`;
  if (argv[0] === '-l' || argv[0] === '--list' || (devclass === 'usb' && argv.length === 0)) {
    return { path, render: (d, f) => (devclass === 'block' ? f.formatLegacyBlockList(d) : f.formatLegacyList(d)) };
  }
  if (argv.length === 0 || ['list', 'ls', 'l'].includes(argv[0])) {
    return { path, render: (d, f) => f.formatQubesTable(d, Boolean(process.stdout.isTTY)) };
  }
  return undefined;
}

/** Handles the command if it can; resolves false to let the full CLI run it. */
export async function quick(prog: string, argv: readonly string[]): Promise<boolean> {
  const wanted = plan(prog, argv);
  const socket = resolveSocket();
  if (!wanted || !daemonPresent(socket)) return false;
  try {
    const answer = callApi<{ devices: DeviceJson[] }>(socket, 'GET', wanted.path);
    // Load the formatters while the daemon answers (require: `import()` would start the ESM loader).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const formats = require('./format.js') as Formats;
    process.stdout.write(wanted.render((await answer).devices, formats));
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.code === 'DG_DAEMON_UNAVAILABLE') return false;
    throw error;
  }
}
