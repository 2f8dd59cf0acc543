/**
 * A deterministic corpus of malformed and hostile HTTP exchanges for devgated's API sockets. Every
 * case is built to be wrong at the boundary (HTTP framing, routing, content type, JSON, the route's
 * schema, or the device argument's syntax), never a well-formed request that devgated may act on
 * and audit as a decision. Cases that carry a valid body (wrong socket, path tricks, wrong content
 * types, cut-off requests) use it on purpose: if the daemon ever acted on one, the state changes.
 */
import { mulberry32 } from './daemon-harness.js';

export type SocketKind = 'read' | 'rw';

export interface HostileCase {
  readonly index: number;
  readonly category: string;
  /** What the case is, for failure messages. */
  readonly label: string;
  readonly socket: SocketKind;
  readonly bytes: Buffer;
  /** A HEAD request: answers carry no body. */
  readonly head: boolean;
  /** Destroy the connection this long after writing, without half-closing or waiting. */
  readonly abandonAfterMs?: number;
  /** Whether at least one response must come back (the request is complete enough to answer). */
  readonly expectResponse: boolean;
}

type Rng = () => number;

// prettier-ignore
const GET_ROUTES = [
  '/v1/health', '/v1/devices', '/v1/domains', '/v1/assignments', '/v1/asks', '/v1/audit', '/v1/deny', '/v1/deny/work', '/v1/answers',
];
// prettier-ignore
const POST_ROUTES = [
  '/v1/attach', '/v1/detach', '/v1/assignments', '/v1/assignments/remove', '/v1/asks/:id/answer',
  '/v1/deny/:frontend/add', '/v1/deny/:frontend/remove', '/v1/deny/:frontend/replace', '/v1/answers/forget',
];

type Kind = 'name' | 'devclass' | 'device' | 'options' | 'mode' | 'only' | 'verdict' | 'bool' | 'patterns' | 'answerId';
interface Field {
  readonly kind: Kind;
  readonly required: boolean;
}
const FIELDS: Record<string, Record<string, Field>> = {
  '/v1/attach': {
    class: { kind: 'devclass', required: true },
    frontend: { kind: 'name', required: true },
    device: { kind: 'device', required: true },
    options: { kind: 'options', required: false },
  },
  '/v1/detach': {
    class: { kind: 'devclass', required: true },
    frontend: { kind: 'name', required: true },
    device: { kind: 'device', required: false },
  },
  '/v1/assignments': {
    class: { kind: 'devclass', required: true },
    frontend: { kind: 'name', required: true },
    device: { kind: 'device', required: true },
    options: { kind: 'options', required: false },
    mode: { kind: 'mode', required: false },
    only: { kind: 'only', required: false },
  },
  '/v1/assignments/remove': {
    class: { kind: 'devclass', required: true },
    frontend: { kind: 'name', required: true },
    device: { kind: 'device', required: false },
    only: { kind: 'only', required: false },
  },
  '/v1/asks/:id/answer': {
    verdict: { kind: 'verdict', required: true },
    frontend: { kind: 'name', required: false },
    remember: { kind: 'bool', required: false },
  },
  '/v1/deny/:frontend/add': { patterns: { kind: 'patterns', required: true } },
  '/v1/deny/:frontend/remove': { patterns: { kind: 'patterns', required: true } },
  '/v1/deny/:frontend/replace': { patterns: { kind: 'patterns', required: true } },
  // One scope, an answer id alone: without it, or with anything beside it, the body is refused.
  '/v1/answers/forget': { id: { kind: 'answerId', required: true } },
};

/**
 * Values the route's schema refuses, or (for device arguments, which the schema only bounds in
 * length) that fail parsing or the store's checks before anything is journaled or audited.
 */
// prettier-ignore
const BAD_VALUES: Record<Kind, readonly unknown[]> = {
  name: ['', ' work', 'wörk', 'a/b', '../work', 'w'.repeat(65), 'work\u0000', 'work\n', '\u202ekrow', 'work vm', '<b>', '😀', 'a%2fb', '\\', 'work;rm'],
  devclass: ['', 'Block', 'blo_ck', '1block', 'b'.repeat(33), 'block\n', 'блок', '*', 'block ', '-block', 'bl/ock'],
  device: [
    '', 'ab', 'x'.repeat(513), 'dom0', ':sdb', 'dom0:', 'dom0::id', 'dom0:\u0000x', 'dom0:a b', 'dom0:../etc/passwd',
    'dom0:/dev/sda', 'Dom 0:sdb', 'dom0:sdé', `dom0:${'p'.repeat(200)}`, 'dom0:-x', 'dom0:%2e%2e', '\u0000:\u0000', 'dom0:\u202esdb',
  ],
  options: [
    { 'bad key': 'x' }, { '': 'x' }, { k: 'v'.repeat(257) }, Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])),
    { ['k'.repeat(65)]: 'x' }, { k: 'a\u0000b' }, { ключ: 'x' }, { 'read-only': 'yes\n' }, { 'k/..': 'x' },
  ],
  mode: ['manual', 'AUTO-ATTACH', '', 'auto_attach', 'always', 'auto-attach '],
  only: ['both', '', 'PORT', 'port ', 'devices'],
  verdict: ['yes', 'ALLOW', '', 'allow ', 'ask', 'deny\u0000'],
  bool: ['true', 1, 0, null, 'yes'],
  // Never `[]`: replacing a deny list with nothing is a valid request.
  patterns: [
    ['u03***'], ['U03****'], ['u03*****'], ['x03****'], ['u0g****'], ['u03****', 'u03****'], ['u03****\u0000'], ['u03 ***'], [''],
    ['b******', 'ü03****'], Array.from({ length: 257 }, (_, i) => `u${i.toString(16).padStart(6, '0')}`),
  ],
  answerId: ['', '0123456789AB', '0123456789a', '0123456789abc', 'g123456789ab', '*', '0123456789ab\n', '../answers'],
};

// prettier-ignore
const WRONG_TYPES: readonly unknown[] = [0, 1, -1, 1.5, 1e308, true, false, null, [], ['work'], ['a', 'b'], {}, { a: 'b' }, [[[]]], { '': {} }];
// prettier-ignore
const WRONG_OPTIONS: readonly unknown[] = ['read-only=yes', 7, true, null, ['read-only', 'yes'], { k: 1 }, { k: null }, { k: true }, { k: {} }, { k: ['v'] }];
// prettier-ignore
const WRONG_PATTERN_LISTS: readonly unknown[] = ['u03****', 7, true, null, {}, { 0: 'u03****' }, [7], [null], [['u03****']], [{}], [true]];
// prettier-ignore
const WRONG_BOOLS: readonly unknown[] = ['true', 'false', 1, 0, null, [], {}, [true], 'yes'];

// prettier-ignore
const EXTRA_KEYS = ['x', 'Class', 'frontEnd', 'device ', '__proto__', 'constructor', 'prototype', 'mode', 'readonly', '$where', '', 'class\u0000', 'id', 'actor', 'requestedBy', 'options'];

// prettier-ignore
const WRONG_CONTENT_TYPES = [
  'text/plain', 'text/plain; charset=utf-8', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/xml',
  'application/octet-stream', '', 'application/json-patch+json', 'application/jsonx', 'json', 'application/ json', 'text/json',
  'application/vnd.api+json', '*/*', 'application/json, text/plain', 'text/html', 'application/javascript', 'image/png',
];

// prettier-ignore
const WRONG_METHODS = ['PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'PROPFIND', 'MKCOL', 'LOCK', 'SEARCH', 'PURGE', 'COPY', 'MOVE', 'FOO', 'get', 'Post', 'G\tET', 'GET\u0000', 'HEAD'];

// prettier-ignore
const BAD_QUERIES: Record<string, readonly string[]> = {
  '/v1/devices': [
    'class=BAD', 'class=', 'class=a_b', 'backend=%C3%A4', 'backend=a%2Fb', 'all=yes', 'all=1', 'all=TRUE', 'all=', 'all=true&all=false', 'x=1',
    'class=block&class=usb', '__proto__=1', 'constructor%5Bprototype%5D=1', 'class%5B%5D=block', '%zz=1', 'class=%zz', `backend=${'b'.repeat(300)}`,
    'class=block%00', 'all=true%0a', `${'k'.repeat(3000)}=v`,
  ],
  '/v1/assignments': ['frontend=w%C3%B6rk', 'class=%00', 'extra=1', 'frontend=', 'frontend=a%20b', 'class=Block', 'frontend=work&frontend=other', 'device=dom0:sdb'],
  '/v1/audit': [
    'limit=0', 'limit=10001', 'limit=-1', 'limit=1.5', 'limit=1e3', 'limit=0x10', 'limit=%205', 'offset=-1', 'offset=x', 'since=yesterday',
    'since=2024-13-45T00:00:00Z', 'until=1', 'order=up', 'order=ASC', `action=${'a'.repeat(33)}`, 'frontend=..%2F..', 'class=A', 'limit=',
    'offset=1&offset=2', 'limit=99999999999999999999',
  ],
  '/v1/deny': ['frontend=work', 'x=1', 'all=true'],
  '/v1/deny/work': ['patterns=u03****', 'x=1', 'frontend=work'],
  '/v1/answers': [
    'frontend=1work', 'class=Block', 'verdict=allow', 'frontend=work&frontend=other', 'id=0123456789ab', 'frontend=%00', 'all=true',
    `frontend=${'w'.repeat(32)}`, 'class=',
  ],
};

const PATH_TRICKS: readonly ((suffix: string) => string)[] = [
  (s) => `/v1/../v1/${s}`,
  (s) => `//v1/${s}`,
  (s) => `/v1//${s}`,
  (s) => `/v1/./${s}`,
  (s) => `/v1/${s}/`,
  (s) => `/v1/${s}/.`,
  (s) => `/v1/${s}/..`,
  (s) => `/V1/${s}`,
  (s) => `/v1/${s.toUpperCase()}`,
  (s) => `/v1%2f${s}`,
  (s) => `/v1%2F${s}`,
  (s) => `/v1/${s}%00`,
  (s) => `/v1/${s}%20`,
  (s) => `/v1/${s};x`,
  (s) => `/%2e%2e/v1/${s}`,
  (s) => `/v1/%2e%2e/v1/${s}`,
  (s) => `/v1/${s}%2f`,
  (s) => `/./v1/${s}`,
  (s) => `/v1\\${s}`,
  (s) => `/v1/${s}%09`,
  (s) => `/v1/${s}%0a`,
  (s) => `/v1/${s}%23`,
  (s) => `/v1/${s}%3f`,
  (s) => `/v1/${s}/%2e`,
  (s) => `/v1/${s}..`,
  (s) => `/v1/.${s}`,
  (s) => `/v1/%252e%252e/${s}`,
  (s) => `v1/${s}`,
  (s) => `/v1/${s}%C0%AF`,
  (s) => `/v1/${s}/%2e%2e/${s}`,
];

// prettier-ignore
const UNKNOWN_PATHS = [
  '/v2/devices', '/v0/health', '/', '/v1', '/v1/', '/v1/attach/now', '/v1/devices/dom0:sdb', '/v1/asks/x', '/v1/asks/x/answer/x', '/v1/health.json',
  '/api/v1/health', '/v1/events/x', '/v1/assignments/remove/all', '/v1/assign', '/v1/unassign', '/v1/denied', '/v1/policy', '/v1/shutdown', '/v1/debug',
  '/v1/deny/work/clear', '/v1/deny/work/add/x', '/v1/answers/forget/all', '/v1/answers/x', '/v1/deny//add',
  '/v1/config', '/.env', '/v1/asks//answer/', '/v1/asks/answer', '*',
];

/** Builds one HTTP/1.1 request; `contentLength` 'auto' computes it, 'none' leaves it out. */
function httpRequest(
  method: string,
  target: string,
  options: {
    body?: string | Buffer;
    contentType?: string | null;
    headers?: readonly string[];
    close?: boolean;
    contentLength?: 'auto' | 'none' | string;
  } = {},
): Buffer {
  const body = options.body === undefined ? undefined : Buffer.from(options.body);
  const lines = [`${method} ${target} HTTP/1.1`, 'Host: devgate'];
  if (options.close ?? true) lines.push('Connection: close');
  if (body !== undefined && options.contentType !== null)
    lines.push(`Content-Type: ${options.contentType ?? 'application/json'}`);
  const length = options.contentLength ?? 'auto';
  if (length === 'auto' && body !== undefined) lines.push(`Content-Length: ${body.length}`);
  else if (length !== 'auto' && length !== 'none') lines.push(`Content-Length: ${length}`);
  lines.push(...(options.headers ?? []));
  const head = Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1');
  return body === undefined ? head : Buffer.concat([head, body]);
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** A JSON object text with `key: value` first, written as text so that `__proto__` stays a key. */
function withExtraKey(body: Record<string, unknown>, key: string, value: unknown): string {
  const rest = JSON.stringify(body).slice(1);
  return `{${JSON.stringify(key)}:${JSON.stringify(value)}${rest === '}' ? '' : ','}${rest}`;
}

export function hostileCorpus(seed: number, count: number): HostileCase[] {
  const rng: Rng = mulberry32(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rng() * items.length)];
  const chance = (p: number) => rng() < p;
  const socketOf = (): SocketKind => (chance(0.5) ? 'read' : 'rw');
  let fresh = 0;

  /** A body the route's schema accepts; its device names a port nothing exists at (`fake…`). */
  const validBody = (route: string): Record<string, unknown> => {
    const port = `dom0:fake${seed % 1000}x${fresh++}`;
    switch (route) {
      case '/v1/attach':
        return { class: 'block', frontend: 'work', device: port, options: { 'read-only': 'yes' } };
      case '/v1/detach':
        return { class: 'block', frontend: 'work', device: port };
      case '/v1/assignments':
        return { class: 'block', frontend: 'work', device: port, only: 'port', mode: 'auto-attach', options: {} };
      case '/v1/assignments/remove':
        // Without a device: every block assignment of `work` (the seeded state) would go.
        return chance(0.5)
          ? { class: 'block', frontend: 'work' }
          : { class: 'block', frontend: 'work', device: port, only: 'port' };
      case '/v1/deny/:frontend/add':
      case '/v1/deny/:frontend/remove':
      case '/v1/deny/:frontend/replace':
        return { patterns: ['u03****'] };
      case '/v1/answers/forget':
        // Sent as is it would be a 404 (no such answer): it is only ever a base to spoil.
        return { id: '0123456789ab' };
      default:
        return { verdict: 'allow', frontend: 'work', remember: true };
    }
  };
  const target = (route: string) =>
    route === '/v1/asks/:id/answer'
      ? `/v1/asks/${encodeURIComponent(pick(['x', '00000000-0000-0000-0000-000000000000', '..', '%2e']))}/answer`
      : route.replace(':frontend', () =>
          pick(['work', 'work', 'personal', '1work', '..', '%2e', 'w'.repeat(40), 'a%20b']),
        );

  const post = (route: string, body: string | Buffer, extra: Parameters<typeof httpRequest>[2] = {}) =>
    httpRequest('POST', target(route), { body, ...extra });

  const generators: Record<string, { weight: number; make: () => Omit<HostileCase, 'index' | 'category'> }> = {
    'bad-json': {
      weight: 8,
      make: () => {
        const route = pick(POST_ROUTES);
        let text = JSON.stringify(validBody(route));
        const at = int(0, text.length - 1);
        switch (int(0, 5)) {
          case 0:
            text = text.slice(0, at) + text.slice(at + 1);
            break;
          case 1:
            text = text.slice(0, at) + pick(['{', '}', '[', ']', ',', ':', '"', '\\', "'"]) + text.slice(at);
            break;
          case 2:
            text = text.replace(/"/g, "'");
            break;
          case 3:
            text = text.slice(0, -1) + ',}';
            break;
          case 4:
            text = pick([
              'NaN',
              'undefined',
              '{a:1}',
              '{"a":01}',
              '{"a":"\\x41"}',
              '{"a":1}{"b":2}',
              '{"a":Infinity}',
              '/*c*/{}',
              '{"a":"\t"}',
            ]);
            break;
          default:
            text = text + pick(['}', ']', ',', 'x', '{}']);
        }
        if (isJson(text)) text += '}';
        return {
          label: `POST ${route} ${text.slice(0, 80)}`,
          socket: socketOf(),
          bytes: post(route, text),
          head: false,
          expectResponse: true,
        };
      },
    },
    'truncated-json': {
      weight: 6,
      make: () => {
        const route = pick(POST_ROUTES);
        const full = JSON.stringify(validBody(route));
        const text = full.slice(0, int(0, full.length - 1));
        return {
          label: `POST ${route} ${text.slice(0, 80)}`,
          socket: socketOf(),
          bytes: post(route, text),
          head: false,
          expectResponse: true,
        };
      },
    },
    'wrong-type': {
      weight: 8,
      make: () => {
        const route = pick(POST_ROUTES);
        const body = validBody(route);
        const [name, field] = pick(Object.entries(FIELDS[route]));
        body[name] =
          field.kind === 'options'
            ? pick(WRONG_OPTIONS)
            : field.kind === 'bool'
              ? pick(WRONG_BOOLS)
              : field.kind === 'patterns'
                ? pick(WRONG_PATTERN_LISTS)
                : pick(WRONG_TYPES);
        const text = JSON.stringify(body);
        return {
          label: `POST ${route} ${text.slice(0, 100)}`,
          socket: socketOf(),
          bytes: post(route, text),
          head: false,
          expectResponse: true,
        };
      },
    },
    'missing-field': {
      weight: 5,
      make: () => {
        const route = pick(POST_ROUTES);
        const body = validBody(route);
        const required = Object.entries(FIELDS[route]).filter(([, f]) => f.required);
        for (const [name] of required) if (chance(0.3) || name === pick(required)[0]) delete body[name];
        if (required.every(([name]) => name in body)) delete body[required[0][0]];
        const text = JSON.stringify(body);
        return {
          label: `POST ${route} ${text}`,
          socket: socketOf(),
          bytes: post(route, text),
          head: false,
          expectResponse: true,
        };
      },
    },
    'extra-field': {
      weight: 5,
      make: () => {
        const route = pick(POST_ROUTES);
        const body = validBody(route);
        const key = pick(EXTRA_KEYS.filter((k) => !(k in FIELDS[route])));
        const text = withExtraKey(body, key, pick(['x', 1, null, { polluted: true }, ['a'], true]));
        return {
          label: `POST ${route} ${text.slice(0, 100)}`,
          socket: socketOf(),
          bytes: post(route, text),
          head: false,
          expectResponse: true,
        };
      },
    },
    'bad-value': {
      weight: 10,
      make: () => {
        const route = pick(POST_ROUTES);
        const body = validBody(route);
        const [name, field] = pick(Object.entries(FIELDS[route]).filter(([, f]) => f.kind !== 'bool'));
        body[name] = pick(BAD_VALUES[field.kind]);
        const text = JSON.stringify(body);
        return {
          label: `POST ${route} ${text.slice(0, 100)}`,
          socket: socketOf(),
          bytes: post(route, text),
          head: false,
          expectResponse: true,
        };
      },
    },
    'not-an-object': {
      weight: 3,
      make: () => {
        const route = pick(POST_ROUTES);
        const text = pick([
          '[]',
          '"x"',
          '123',
          'null',
          'true',
          '[{}]',
          JSON.stringify(JSON.stringify(validBody(route))),
          '',
          ' ',
          '\n',
        ]);
        return {
          label: `POST ${route} ${JSON.stringify(text).slice(0, 80)}`,
          socket: socketOf(),
          bytes: post(route, text),
          head: false,
          expectResponse: true,
        };
      },
    },
    'huge-body': {
      weight: 2,
      make: () => {
        const route = pick(POST_ROUTES);
        const size = int(64 * 1024 + 1, 256 * 1024);
        const body = { ...validBody(route), device: `dom0:${'x'.repeat(size)}` };
        const text = JSON.stringify(body);
        switch (int(0, 3)) {
          case 0:
            return {
              label: `POST ${route} ${text.length} bytes`,
              socket: socketOf(),
              bytes: post(route, text),
              head: false,
              expectResponse: true,
            };
          case 1: {
            // Chunked, no Content-Length: the limit must hold while streaming.
            const head = httpRequest('POST', target(route), {
              contentType: 'application/json',
              headers: ['Transfer-Encoding: chunked'],
            });
            const chunks = [head];
            for (let at = 0; at < text.length; at += 16_384) {
              const part = text.slice(at, at + 16_384);
              chunks.push(Buffer.from(`${Buffer.byteLength(part).toString(16)}\r\n${part}\r\n`));
            }
            chunks.push(Buffer.from('0\r\n\r\n'));
            return {
              label: `POST ${route} chunked ${text.length} bytes`,
              socket: socketOf(),
              bytes: Buffer.concat(chunks),
              head: false,
              expectResponse: true,
            };
          }
          case 2:
            // Claims a terabyte, sends a little.
            return {
              label: `POST ${route} Content-Length 10^12`,
              socket: socketOf(),
              bytes: post(route, '{"class":', { contentLength: '1000000000000' }),
              head: false,
              expectResponse: true,
            };
          default:
            // Just over the limit, in whitespace around a valid body.
            return {
              label: `POST ${route} 64 KiB + 1 of padding`,
              socket: socketOf(),
              bytes: post(route, JSON.stringify(validBody(route)).padEnd(64 * 1024 + 1, ' ')),
              head: false,
              expectResponse: true,
            };
        }
      },
    },
    'deep-json': {
      weight: 3,
      make: () => {
        const route = pick(POST_ROUTES);
        const depth = int(500, 20_000);
        let text: string;
        switch (int(0, 3)) {
          case 0:
            text = '['.repeat(depth) + ']'.repeat(depth);
            break;
          case 1: {
            const d = Math.min(depth, 10_000);
            text = '{"a":'.repeat(d) + '1' + '}'.repeat(d);
            break;
          }
          case 2: {
            const d = Math.min(depth, 10_000);
            const body = JSON.stringify(validBody(route));
            text = `${body.slice(0, -1)},"deep":${'['.repeat(d)}${']'.repeat(d)}}`;
            break;
          }
          default:
            text = '['.repeat(depth);
        }
        return {
          label: `POST ${route} nested ${depth}`,
          socket: socketOf(),
          bytes: post(route, text),
          head: false,
          expectResponse: true,
        };
      },
    },
    'unknown-route': {
      weight: 5,
      make: () => {
        const path = chance(0.5)
          ? pick(UNKNOWN_PATHS)
          : `/v1/${Array.from({ length: int(1, 3) }, () => randomToken(rng, int(1, 12))).join('/')}`;
        const method = pick(['GET', 'POST', 'GET', 'POST', 'HEAD']);
        if (method === 'HEAD')
          return {
            label: `HEAD ${path}`,
            socket: socketOf(),
            bytes: httpRequest('HEAD', path),
            head: true,
            expectResponse: true,
          };
        const bytes =
          method === 'POST'
            ? httpRequest('POST', path, { body: JSON.stringify(validBody(pick(POST_ROUTES))) })
            : httpRequest('GET', path);
        return { label: `${method} ${path}`, socket: socketOf(), bytes, head: false, expectResponse: true };
      },
    },
    'path-trick': {
      weight: 8,
      make: () => {
        const trick = pick(PATH_TRICKS);
        if (chance(0.7)) {
          // A valid body on the rw socket: if a trick reached the route, the state would change.
          const route = pick(['/v1/assignments', '/v1/assignments/remove', '/v1/attach', '/v1/detach']);
          const path = trick(route.slice('/v1/'.length));
          return {
            label: `POST ${path}`,
            socket: 'rw',
            bytes: httpRequest('POST', path, { body: JSON.stringify(validBody(route)) }),
            head: false,
            expectResponse: true,
          };
        }
        const path = trick(pick(GET_ROUTES).slice('/v1/'.length));
        return {
          label: `GET ${path}`,
          socket: socketOf(),
          bytes: httpRequest('GET', path),
          head: false,
          expectResponse: true,
        };
      },
    },
    'nul-control': {
      weight: 5,
      make: () => {
        const control = String.fromCharCode(pick([0, 1, 7, 8, 9, 10, 11, 12, 13, 27, 127]));
        if (chance(0.5)) {
          // In the request line or a header: node's HTTP parser must refuse it.
          // The body is refused too (no such class), for where a control byte is legal (a tab in a value).
          const route = pick(POST_ROUTES);
          const body = JSON.stringify({ ...validBody(route), class: 'BAD' });
          const text = httpRequest('POST', target(route), { body }).toString('latin1');
          const headEnd = text.indexOf('\r\n\r\n');
          const where = pick([int(5, text.indexOf(' HTTP/') - 1), int(text.indexOf('\r\n') + 2, headEnd - 1)]);
          const bytes = Buffer.from(text.slice(0, where) + control + text.slice(where), 'latin1');
          return {
            label: `POST ${route} with ${JSON.stringify(control)} at ${where}`,
            socket: 'rw',
            bytes,
            head: false,
            expectResponse: true,
          };
        }
        const route = pick(POST_ROUTES);
        const body = validBody(route);
        const [name, field] = pick(
          Object.entries(FIELDS[route]).filter(([, f]) => f.kind !== 'bool' && f.kind !== 'options'),
        );
        body[name] =
          field.kind === 'device'
            ? `dom0:sd${control}b`
            : field.kind === 'patterns'
              ? [`u03***${control}`]
              : field.kind === 'answerId'
                ? `0123456789a${control}`
                : `${field.kind === 'devclass' ? 'block' : field.kind === 'name' ? 'work' : 'allow'}${control}`;
        const text = JSON.stringify(body);
        return {
          label: `POST ${route} ${JSON.stringify(text)}`,
          socket: socketOf(),
          bytes: post(route, text),
          head: false,
          expectResponse: true,
        };
      },
    },
    unicode: {
      weight: 5,
      make: () => {
        const route = pick(POST_ROUTES);
        switch (int(0, 4)) {
          case 0: {
            // Raw UTF-8 in the path.
            const path = `/v1/${pick(['dévices', 'attach\u00a0', 'аttach', 'health\u200b', '设备'])}`;
            return {
              label: `GET ${path}`,
              socket: socketOf(),
              bytes: httpRequest(pick(['GET', 'POST']), path),
              head: false,
              expectResponse: true,
            };
          }
          case 1: {
            const path = `/v1/${pick(['d%C3%A9vices', 'attach%C2%A0', '%D0%B0ttach', 'health%E2%80%8B', 'assignments%EF%BC%8Fremove'])}`;
            return {
              label: `GET ${path}`,
              socket: socketOf(),
              bytes: httpRequest('GET', path),
              head: false,
              expectResponse: true,
            };
          }
          case 2: {
            const body = validBody(route);
            const [name, field] = pick(
              Object.entries(FIELDS[route]).filter(([, f]) =>
                ['name', 'devclass', 'device', 'verdict', 'patterns', 'answerId'].includes(f.kind),
              ),
            );
            const weird = pick(['wörk', '\u202ework', 'wo\u200brk', 'ｗｏｒｋ', '\ud800', 'w\u0301ork', '𝔴𝔬𝔯𝔨']);
            body[name] =
              field.kind === 'device'
                ? `dom0:${weird}`
                : field.kind === 'patterns'
                  ? [`u03${weird}`.slice(0, 7)]
                  : weird;
            const text = JSON.stringify(body);
            return {
              label: `POST ${route} ${text.slice(0, 100)}`,
              socket: socketOf(),
              bytes: post(route, text),
              head: false,
              expectResponse: true,
            };
          }
          case 3: {
            // Invalid UTF-8 inside a JSON string: decoded as U+FFFD, which no field accepts.
            const body = JSON.stringify(validBody(route)).replace(
              /"(work|block|allow|u03\*\*\*\*|0123456789ab)"/,
              '"w\u0001"',
            );
            const bytes = Buffer.from(body, 'latin1');
            const at = bytes.indexOf(1);
            const broken = Buffer.concat([
              bytes.subarray(0, at),
              Buffer.from(pick([[0xc0, 0xaf], [0xff], [0xed, 0xa0, 0x80], [0xe2, 0x82]])),
              bytes.subarray(at + 1),
            ]);
            return {
              label: `POST ${route} invalid UTF-8`,
              socket: socketOf(),
              bytes: post(route, broken),
              head: false,
              expectResponse: true,
            };
          }
          default: {
            // A byte order mark, then something that is not valid JSON.
            const text = '\ufeff' + JSON.stringify(validBody(route)).slice(0, -1);
            return {
              label: `POST ${route} BOM + cut`,
              socket: socketOf(),
              bytes: post(route, text),
              head: false,
              expectResponse: true,
            };
          }
        }
      },
    },
    'wrong-method': {
      weight: 5,
      make: () => {
        const method = pick(WRONG_METHODS);
        const isGetRoute = chance(0.5);
        const route = isGetRoute ? pick(GET_ROUTES.concat('/v1/events')) : pick(POST_ROUTES);
        let m = isGetRoute && chance(0.3) ? 'POST' : !isGetRoute && chance(0.3) ? 'GET' : method;
        // HEAD mirrors GET routes (a success), and /v1/assignments takes both GET and POST.
        if (isRoute(m === 'HEAD' ? 'GET' : m, route)) m = 'PUT';
        const body =
          m === 'GET' || m === 'HEAD' ? undefined : JSON.stringify(validBody(isGetRoute ? '/v1/assignments' : route));
        return {
          label: `${m} ${route}`,
          socket: socketOf(),
          bytes: httpRequest(m, target(route), { body }),
          head: m === 'HEAD',
          expectResponse: true,
        };
      },
    },
    'wrong-content-type': {
      weight: 5,
      make: () => {
        const route = pick([
          '/v1/assignments',
          '/v1/assignments/remove',
          '/v1/attach',
          '/v1/detach',
          '/v1/asks/:id/answer',
        ]);
        const type = chance(0.1) ? null : pick(WRONG_CONTENT_TYPES);
        // Now and then a second, correct Content-Type after the wrong one: the first one counts.
        const headers = type !== null && chance(0.1) ? ['Content-Type: application/json'] : [];
        return {
          label: `POST ${route} as ${type}`,
          socket: 'rw',
          bytes: post(route, JSON.stringify(validBody(route)), { contentType: type, headers }),
          head: false,
          expectResponse: true,
        };
      },
    },
    'bad-query': {
      weight: 6,
      make: () => {
        const route = pick(Object.keys(BAD_QUERIES));
        const query = pick(BAD_QUERIES[route]);
        return {
          label: `GET ${route}?${query.slice(0, 80)}`,
          socket: socketOf(),
          bytes: httpRequest('GET', `${route}?${query}`),
          head: false,
          expectResponse: true,
        };
      },
    },
    'absurd-headers': {
      weight: 4,
      make: () => {
        const route = pick(POST_ROUTES);
        const body = JSON.stringify({ ...validBody(route), class: 'BAD' }); // refused even if the headers pass
        const variants: (() => Buffer)[] = [
          () => post(route, body, { headers: [`X-Big: ${'a'.repeat(int(17_000, 70_000))}`] }),
          () => post(route, body, { headers: Array.from({ length: int(2_100, 4_000) }, (_, i) => `X-H${i}: v`) }),
          () => httpRequest('GET', `/v1/devices?class=${'a'.repeat(int(17_000, 40_000))}`),
          () => post(route, body, { headers: ['X Y: z'] }),
          () => post(route, body, { headers: [': empty'] }),
          () => post(route, body, { headers: ['X-Fold: a', ' continued'] }),
          () => post(route, body, { headers: [`Content-Length: ${Buffer.byteLength(body) + 1}`] }),
          () =>
            post(route, body, {
              contentLength: pick(['-1', 'abc', '1e3', '0x10', '99999999999999999999', ' ', '5, 5']),
            }),
          () =>
            post(route, body, {
              headers: [
                pick([
                  'Transfer-Encoding: gzip',
                  'Transfer-Encoding: chunked, gzip',
                  'Transfer-Encoding: identity',
                  'Transfer-Encoding: chunked',
                ]),
              ],
            }),
          () =>
            post(route, body, {
              headers: [
                `X-Devgate-Actor: ${pick(['a'.repeat(8000), 'root\u0000', 'uid=0(root) via devgate.sock.rw', '\u00ff\u00fe'])}`,
              ],
            }),
          () => post(route, body, { headers: ['Expect: 100-continue'] }),
          () => post(route, body, { headers: [pick(['Expect: teapot', 'Expect: 200-ok'])] }),
          () => post(route, body, { headers: ['Content-Encoding: gzip'] }),
        ];
        return {
          label: `POST ${route} with odd headers`,
          socket: socketOf(),
          bytes: pick(variants)(),
          head: false,
          expectResponse: true,
        };
      },
    },
    'half-closed': {
      weight: 5,
      make: () => {
        // A valid state-changing request cut short, then our side closed: it must not take effect.
        const route = pick(['/v1/assignments', '/v1/assignments/remove', '/v1/attach']);
        const full = post(route, JSON.stringify(validBody(route)));
        const cut = int(0, full.length - 1);
        return {
          label: `POST ${route} cut at ${cut}/${full.length}, half-closed`,
          socket: 'rw',
          bytes: full.subarray(0, cut),
          head: false,
          expectResponse: false,
        };
      },
    },
    abandoned: {
      weight: 3,
      make: () => {
        const route = pick(['/v1/assignments', '/v1/assignments/remove', '/v1/attach']);
        const full = post(route, JSON.stringify(validBody(route)));
        const cut = int(0, full.length - 1);
        return {
          label: `POST ${route} cut at ${cut}/${full.length}, abandoned`,
          socket: 'rw',
          bytes: full.subarray(0, cut),
          head: false,
          abandonAfterMs: int(0, 30),
          expectResponse: false,
        };
      },
    },
    'random-bytes': {
      weight: 5,
      make: () => {
        const bytes = (() => {
          switch (int(0, 4)) {
            case 0:
              return Buffer.from(Array.from({ length: int(1, 3000) }, () => int(0, 255)));
            case 1:
              return Buffer.from(
                Array.from({ length: int(1, 200) }, () => randomToken(rng, int(1, 40))).join(
                  pick([' ', '\r\n', '\n']),
                ) + '\r\n\r\n',
              );
            case 2:
              return Buffer.from([
                0x16,
                0x03,
                0x01,
                0x02,
                0x00,
                0x01,
                0x00,
                0x01,
                0xfc,
                0x03,
                0x03,
                ...Array.from({ length: 64 }, () => int(0, 255)),
              ]);
            case 3:
              return Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
            default:
              return Buffer.from(
                `${pick(['GET', 'POST'])} ${pick(GET_ROUTES)} ${pick(['HTTP/9.9', 'HTTP/1', 'HTTP/1.1.1', 'HTTPS/1.1', 'http/1.1', ''])}\r\n\r\n`,
              );
          }
        })();
        return {
          label: `${bytes.length} bytes: ${JSON.stringify(bytes.subarray(0, 40).toString('latin1'))}`,
          socket: socketOf(),
          bytes,
          head: false,
          expectResponse: false,
        };
      },
    },
    pipelined: {
      weight: 3,
      make: () => {
        const n = int(2, 4);
        const parts: Buffer[] = [];
        for (let i = 0; i < n; i++) {
          const route = pick(POST_ROUTES);
          const body = validBody(route);
          delete body[Object.entries(FIELDS[route]).find(([, f]) => f.required)![0]];
          parts.push(
            chance(0.5)
              ? post(route, JSON.stringify(body), { close: i === n - 1 })
              : httpRequest('GET', `/v1/audit?${pick(BAD_QUERIES['/v1/audit'])}`, { close: i === n - 1 }),
          );
        }
        return {
          label: `${n} pipelined`,
          socket: socketOf(),
          bytes: Buffer.concat(parts),
          head: false,
          expectResponse: true,
        };
      },
    },
    'valid-on-read-socket': {
      weight: 4,
      make: () => {
        // The read-only socket has no state-changing routes, whatever the body.
        const route = pick(POST_ROUTES);
        return {
          label: `POST ${route} on the read-only socket`,
          socket: 'read',
          bytes: post(route, JSON.stringify(validBody(route))),
          head: false,
          expectResponse: true,
        };
      },
    },
  };

  const table = Object.entries(generators);
  const total = table.reduce((sum, [, g]) => sum + g.weight, 0);
  const cases: HostileCase[] = [];
  for (let index = 0; index < count; index++) {
    let roll = rng() * total;
    const [category, generator] = table.find(([, g]) => (roll -= g.weight) < 0) ?? table[table.length - 1];
    cases.push({ index, category, ...generator.make() });
  }
  return cases;
}

function isRoute(method: string, route: string): boolean {
  return (
    (method === 'GET' && [...GET_ROUTES, '/v1/events'].includes(route)) ||
    (method === 'POST' && POST_ROUTES.includes(route))
  );
}

function randomToken(rng: Rng, length: number): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789-_.~';
  let token = '';
  for (let i = 0; i < length; i++) token += alphabet[Math.floor(rng() * alphabet.length)];
  return token;
}
