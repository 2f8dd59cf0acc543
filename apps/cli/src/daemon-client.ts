// The client side of devgated's API. Only node:http at run time, so commands that go through the
// daemon start as fast as Node itself.
import * as http from 'node:http';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

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

export function callApi<T>(
  socket: string,
  method: 'GET' | 'POST',
  route: string,
  body?: unknown,
  timeoutMs = 120_000,
): Promise<T> {
  // State changes go to the `.rw` socket, which only allowed users can open.
  const socketPath = method === 'GET' ? socket : `${socket}.rw`;
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const request = http.request(
      {
        socketPath,
        method,
        path: route,
        headers: {
          ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
          'x-devgate-actor': actor(),
        },
        timeout: timeoutMs,
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          let parsed: { error?: { code: string; message: string; hint?: string } } & Record<string, unknown>;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            return reject(
              new ApiError('DG_DAEMON_UNAVAILABLE', `devgated sent a malformed answer (${response.statusCode})`),
            );
          }
          if (parsed.error) {
            const { code, message, hint } = parsed.error;
            return reject(new ApiError(code, message, hint, response.statusCode));
          }
          resolve(parsed as T);
        });
      },
    );
    request.on('timeout', () => request.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    request.on('error', (error: NodeJS.ErrnoException) => {
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
    request.end(payload);
  });
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
