import { type IncomingMessage, STATUS_CODES, type ServerResponse } from 'node:http';
import { type Duplex } from 'node:stream';
import { Subscription } from 'rxjs';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import {
  ASSIGNMENT_MODES,
  type DeviceManager,
  DevgateError,
  type DriverReport,
  Errors,
  deviceListBytes,
  errorCode,
  parseDeviceArgument,
} from '@devgate/core';
import { type DaemonEvents, type DeviceService, type SqliteStateStore } from '@devgate/service';
import { type AskService } from '../services/asks.js';
import { PolicyStateService } from '../services/policy-state-service.js';
import { ListAnswer } from './list-answer.js';
import { registerPolicyRoutes } from './policy-routes.js';

export const API_VERSION = 'v1';
const BODY_LIMIT = 64 * 1024;
/**
 * What may wait unsent for one `GET /v1/events` client. A client that stops reading would otherwise
 * make devgated keep every event for it (+439 MiB for 50,000 events); one that reads keeps this near
 * zero, and 4 MiB is still thousands of frames of slack for a burst (a disk with 256 partitions).
 */
export const EVENT_STREAM_MAX_BUFFERED = 4 * 1024 * 1024;

/** Where the API reports what it does to a client on its own (pino's signature). */
export interface ApiLog {
  warn(fields: Record<string, unknown>, message: string): void;
}

export interface ApiContext {
  readonly manager: DeviceManager;
  readonly store: SqliteStateStore;
  readonly devices: DeviceService;
  readonly asks: AskService;
  readonly events: DaemonEvents;
  readonly version: string;
  readonly startedAt: string;
  /** What `GET /v1/drivers` lists: every driver with its origin and health, and refused packages. */
  readonly drivers?: () => readonly DriverReport[];
  /** Told when a list answer was made (not the kept one): its garbage is worth a collection once quiet. */
  readonly afterBigWork?: () => void;
  readonly log?: ApiLog;
}

// JSON schemas: fastify validates every body and query before a handler runs.
const NAME = { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.*:+-]+$' } as const;
const DEVCLASS = { type: 'string', minLength: 1, maxLength: 32, pattern: '^[a-z][a-z0-9-]*$' } as const;
const DEVICE_ARG = { type: 'string', minLength: 3, maxLength: 512 } as const;
// Query strings are text: with type coercion off, booleans and numbers are matched as strings.
const BOOLEAN_QUERY = { type: 'string', enum: ['true', 'false'] } as const;
const OPTIONS = {
  type: 'object',
  maxProperties: 16,
  // What the store accepts (store/validate.ts): an option it would refuse never gets as far as
  // the audit log as a "denied" decision.
  propertyNames: { pattern: '^[0-9A-Za-z_.-]{1,64}$' },
  additionalProperties: { type: 'string', maxLength: 256, pattern: '^[^\\u0000-\\u001f\\u007f-\\u009f]*$' },
} as const;
const attachBody = {
  type: 'object',
  required: ['class', 'frontend', 'device'],
  additionalProperties: false,
  properties: { class: DEVCLASS, frontend: NAME, device: DEVICE_ARG, options: OPTIONS },
} as const;
const detachBody = {
  type: 'object',
  required: ['class', 'frontend'],
  additionalProperties: false,
  properties: { class: DEVCLASS, frontend: NAME, device: DEVICE_ARG },
} as const;
const assignBody = {
  type: 'object',
  required: ['class', 'frontend', 'device'],
  additionalProperties: false,
  properties: {
    class: DEVCLASS,
    frontend: NAME,
    device: DEVICE_ARG,
    options: OPTIONS,
    mode: { type: 'string', enum: ASSIGNMENT_MODES.filter((m) => m !== 'manual') },
    only: { type: 'string', enum: ['port', 'device'] },
  },
} as const;
const unassignBody = {
  type: 'object',
  required: ['class', 'frontend'],
  additionalProperties: false,
  properties: {
    class: DEVCLASS,
    frontend: NAME,
    device: DEVICE_ARG,
    only: { type: 'string', enum: ['port', 'device'] },
  },
} as const;
const answerBody = {
  type: 'object',
  required: ['verdict'],
  additionalProperties: false,
  properties: { verdict: { type: 'string', enum: ['allow', 'deny'] }, frontend: NAME, remember: { type: 'boolean' } },
} as const;

type Body<T> = FastifyRequest<{ Body: T }>;

/**
 * The HTTP API on one Unix socket. `readOnly` leaves out every route that changes state: devgated
 * serves a read-only instance on its main socket and a full one on the `.rw` socket (ADR 0004).
 */
export function buildApi(
  context: ApiContext,
  options: { readOnly: boolean; actor: (request: FastifyRequest) => string },
): FastifyInstance {
  const app = Fastify({
    bodyLimit: BODY_LIMIT,
    logger: false,
    return503OnClosing: true,
    routerOptions: { maxParamLength: 256 },
    // JSON bodies keep JSON's types, and a field a schema does not name is refused, not dropped:
    // fastify's defaults would turn `"frontend": true` into "true" and strip a misspelled `mode`.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false } },
    // The Host header means nothing on a Unix socket; requiring it made node answer a bare 400.
    http: { requireHostHeader: false },
    // Malformed URLs, over-long parameters and malformed HTTP get the API's error shape as well.
    frameworkErrors: (error, _request, reply) => sendError(reply, toApiError(error)),
    clientErrorHandler: answerClientError,
  });
  const { manager, store, devices, asks } = context;
  // An Expect other than 100-continue: node would answer a bare 417.
  app.server.on('checkExpectation', (_request: IncomingMessage, response: ServerResponse) => {
    const body = JSON.stringify({ error: plain(Errors.apiBadRequest({ reason: 'unsupported Expect header' })) });
    response
      .writeHead(417, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        connection: 'close',
      })
      .end(body);
  });
  // The list answers, until the next device event. `DEVGATE_API_CACHE` is for benchmarks and
  // diagnosis (ADR 0015): `device` assembles every answer from the per-device JSON, `none`
  // serializes every device of every answer again.
  const cacheMode = apiCacheMode(process.env.DEVGATE_API_CACHE);
  const listCache = new Map<string, ListAnswer>();
  const listChanges = manager.events$.subscribe(() => listCache.forEach((answer) => answer.invalidate()));
  app.addHook('onClose', async () => listChanges.unsubscribe());

  app.setErrorHandler((error, _request, reply) => sendError(reply, toApiError(error)));
  app.setNotFoundHandler((request, reply) =>
    sendError(reply, toApiError(Errors.apiNotFound({ method: request.method, url: request.url.slice(0, 200) }))),
  );

  app.get(`/${API_VERSION}/health`, async () => ({
    version: context.version,
    api: API_VERSION,
    startedAt: context.startedAt,
    readOnly: options.readOnly,
    sources: manager.sources.map((s) => ({ id: s.id, backend: s.backend, hotplug: s.hotplug })),
    faults: manager.faults().map((f) => ({ driver: f.driverId, source: f.sourceId, message: f.error.message })),
  }));

  app.get<{ Querystring: { class?: string; backend?: string; all?: 'true' | 'false' } }>(
    `/${API_VERSION}/devices`,
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { class: DEVCLASS, backend: NAME, all: BOOLEAN_QUERY },
        },
      },
    },
    async (request, reply) => {
      // Listing is the hot path (every CLI call, every tray refresh): the answer is kept until the
      // next device event, so a list of 10,000 devices is one buffer write; after an event it is
      // assembled from each device's serialized JSON, which only the changed devices lack.
      const all = request.query.all === 'true';
      const list = () =>
        manager.list({ devclass: request.query.class, backend: request.query.backend, includeHidden: all });
      if (cacheMode === 'none') return reply.type('application/json').send(deviceListBytes(list(), { cached: false }));
      const key = `${request.query.class ?? ''}|${request.query.backend ?? ''}|${all}`;
      let answer = listCache.get(key);
      if (!answer) {
        // Keys come from clients: a bounded number of answers is kept.
        if (listCache.size >= 64) listCache.clear();
        answer = new ListAnswer();
        listCache.set(key, answer);
      }
      const { parts, length, made } = answer.answer(list, { reuse: cacheMode === 'answer' });
      if (made) context.afterBigWork?.();
      // The kept chunks go out as they are, without a copy of the whole answer.
      reply.hijack();
      reply.raw.writeHead(200, { 'content-type': 'application/json', 'content-length': length });
      for (const part of parts) reply.raw.write(part);
      reply.raw.end();
      return reply;
    },
  );

  app.get(`/${API_VERSION}/drivers`, async () => ({ drivers: context.drivers?.() ?? [] }));

  app.get(`/${API_VERSION}/domains`, async () => {
    // Which can take a device now: backends are there while devgated runs; VMs ask their connector.
    const domains = manager.domains();
    const backends = new Set(manager.sources.map((s) => s.backend));
    const running: string[] = [];
    for (const domain of domains) {
      const connector = manager.connectors.find((c) => c.manages(domain));
      if (backends.has(domain) || (connector && (await connector.isRunning(domain).catch(() => false)))) {
        running.push(domain);
      }
    }
    return { domains, running };
  });

  app.get<{ Querystring: { class?: string; frontend?: string } }>(
    `/${API_VERSION}/assignments`,
    {
      schema: {
        querystring: { type: 'object', additionalProperties: false, properties: { class: DEVCLASS, frontend: NAME } },
      },
    },
    async (request) => ({
      assignments: store.assignments.list({ devclass: request.query.class, frontend: request.query.frontend }),
    }),
  );

  app.get(`/${API_VERSION}/asks`, async () => ({ asks: asks.list() }));

  // Deny lists and remembered answers (reads here, changes on the read-write instance only).
  registerPolicyRoutes(app, new PolicyStateService(store, context.events), { ...options, version: API_VERSION });

  app.get<{ Querystring: Record<string, string | undefined> }>(
    `/${API_VERSION}/audit`,
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            since: { type: 'string', format: 'date-time' },
            until: { type: 'string', format: 'date-time' },
            action: { type: 'string', maxLength: 32 },
            frontend: NAME,
            class: DEVCLASS,
            limit: { type: 'string', pattern: '^(?:[1-9][0-9]{0,3}|10000)$' },
            offset: { type: 'string', pattern: '^[0-9]{1,15}$' },
            order: { type: 'string', enum: ['asc', 'desc'] },
          },
        },
      },
    },
    async (request) => {
      const q = request.query;
      return {
        entries: store.audit.query({
          since: q.since,
          until: q.until,
          action: q.action,
          frontend: q.frontend,
          devclass: q.class,
          limit: q.limit === undefined ? undefined : Number(q.limit),
          offset: q.offset === undefined ? undefined : Number(q.offset),
          order: q.order as 'asc' | 'desc' | undefined,
        }),
      };
    },
  );

  app.get(`/${API_VERSION}/events`, (request, reply) => streamEvents(context, request, reply));

  if (!options.readOnly) {
    app.post(`/${API_VERSION}/attach`, { schema: { body: attachBody } }, async (request: Body<AttachBodyT>) => ({
      device: await devices.attach(fromBody(request.body), options.actor(request)),
    }));
    app.post(`/${API_VERSION}/detach`, { schema: { body: detachBody } }, async (request: Body<DetachBodyT>) => ({
      detached: await devices.detach(
        { ...fromBody(request.body), device: request.body.device },
        options.actor(request),
      ),
    }));
    app.post(`/${API_VERSION}/assignments`, { schema: { body: assignBody } }, async (request: Body<AssignBodyT>) => {
      const body = request.body;
      parseDeviceArgument(body.device);
      return {
        assignment: devices.assign(
          { ...fromBody(body), mode: body.mode ?? 'auto-attach', only: body.only },
          options.actor(request),
        ),
      };
    });
    app.post(
      `/${API_VERSION}/assignments/remove`,
      { schema: { body: unassignBody } },
      async (request: Body<UnassignBodyT>) => ({
        removed: devices.unassign(
          {
            devclass: request.body.class,
            frontend: request.body.frontend,
            device: request.body.device,
            only: request.body.only,
          },
          options.actor(request),
        ),
      }),
    );
    app.post<{ Params: { id: string }; Body: AnswerBodyT }>(
      `/${API_VERSION}/asks/:id/answer`,
      {
        schema: { body: answerBody, params: { type: 'object', properties: { id: { type: 'string', maxLength: 64 } } } },
      },
      async (request) => ({
        ask: asks.answer(request.params.id, { ...request.body, by: options.actor(request) }),
      }),
    );
  }
  return app;
}

type ApiCacheMode = 'answer' | 'device' | 'none';

function apiCacheMode(value: string | undefined): ApiCacheMode {
  return value === 'device' || value === 'none' ? value : 'answer';
}

interface AttachBodyT {
  class: string;
  frontend: string;
  device: string;
  options?: Record<string, string>;
}
type DetachBodyT = Omit<AttachBodyT, 'device' | 'options'> & { device?: string };
type AssignBodyT = AttachBodyT & { mode?: 'auto-attach' | 'ask-to-attach' | 'required'; only?: 'port' | 'device' };
type UnassignBodyT = DetachBodyT & { only?: 'port' | 'device' };
interface AnswerBodyT {
  verdict: 'allow' | 'deny';
  frontend?: string;
  remember?: boolean;
}

function fromBody(body: AttachBodyT | DetachBodyT) {
  return {
    devclass: body.class,
    frontend: body.frontend,
    device: (body as AttachBodyT).device,
    options: (body as AttachBodyT).options,
  };
}

/**
 * Server-sent events: every DeviceEvent, ask, answer and audit entry, as they happen. A client that
 * falls EVENT_STREAM_MAX_BUFFERED behind is cut off (it reconnects and lists again), so what is
 * queued for it stays bounded.
 */
function streamEvents(context: ApiContext, request: FastifyRequest, reply: FastifyReply): void {
  reply.hijack();
  const response = reply.raw;
  response.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  response.write(`: devgated ${context.version}\n\n`);
  // What the stream holds: its event subscription and keep-alive timer, ended together.
  const stream = new Subscription();
  const keepAlive = setInterval(() => send(': keep-alive\n\n'), 15_000);
  keepAlive.unref();
  stream.add(() => clearInterval(keepAlive));
  const send = (frame: string | Buffer) => {
    if (response.destroyed || response.writableEnded) return;
    // writableLength counts both the response's own queue and its socket's.
    const buffered = response.writableLength;
    // An empty queue takes any frame: only a client that is behind is cut off.
    if (buffered === 0 || buffered + Buffer.byteLength(frame) <= EVENT_STREAM_MAX_BUFFERED) {
      response.write(frame);
      return;
    }
    context.log?.warn(
      { buffered, limit: EVENT_STREAM_MAX_BUFFERED },
      'event stream client is not reading: its stream is ended',
    );
    stream.unsubscribe();
    response.destroy();
  };
  stream.add(
    context.events.events$.subscribe({
      next: (event) => send(context.events.frame(event)),
      complete: () => response.end(),
    }),
  );
  request.raw.on('close', () => stream.unsubscribe());
}

interface ApiError {
  readonly status: number;
  readonly code: string;
  readonly message: string;
  readonly hint?: string;
}

const STATUS: Record<string, number> = {
  DG_API_NOT_FOUND: 404,
  DG_UNKNOWN_DEVICE: 404,
  DG_NO_SUCH_BACKEND: 404,
  DG_NO_CONNECTOR: 404,
  DG_ASK_NOT_FOUND: 404,
  DG_ANSWER_NOT_FOUND: 404,
  DG_NOT_ASSIGNED: 404,
  DG_API_TOO_LARGE: 413,
  DG_NOT_ALLOWED: 403,
  DG_POLICY_DENIED: 403,
  DG_DOMAIN_NOT_RUNNING: 409,
  DG_ALREADY_ATTACHED: 409,
  DG_ALREADY_ASSIGNED: 409,
  DG_OVERLAP: 409,
  DG_ATTACH_IN_PROGRESS: 409,
  DG_DEVICE_IN_USE: 409,
  DG_NOT_ATTACHED: 409,
  DG_DEVICE_GONE: 409,
  DG_DETACH_TIMEOUT: 504,
  DG_QMP_TIMEOUT: 504,
};

/** Every failure becomes a coded JSON error; nothing reaches the client as a stack trace. */
function toApiError(error: unknown): ApiError {
  if (error instanceof DevgateError) {
    const status = STATUS[error.code] ?? (error.kind === 'usage' ? 400 : 422);
    return { status, code: error.code, message: error.message, hint: error.hint };
  }
  const fastifyError = error as { code?: string; statusCode?: number; message?: string; validation?: unknown };
  if (fastifyError.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return { status: 413, ...plain(Errors.apiTooLarge()) };
  if (fastifyError.validation || fastifyError.code?.startsWith('FST_ERR_CTP') || fastifyError.statusCode === 400) {
    return { status: 400, ...plain(Errors.apiBadRequest({ reason: String(fastifyError.message).slice(0, 300) })) };
  }
  if (fastifyError.statusCode && fastifyError.statusCode < 500) {
    return {
      status: fastifyError.statusCode,
      code: 'DG_API_BAD_REQUEST',
      message: String(fastifyError.message).slice(0, 300),
    };
  }
  return { status: 500, code: errorCode(error), message: 'internal error (logged by devgated)' };
}

/**
 * What node's HTTP parser rejects (not HTTP, a NUL in the path, oversized headers, a body cut short
 * by a half-close) never reaches a route: answered here in the API's error shape, then closed.
 */
function answerClientError(error: NodeJS.ErrnoException, socket: Duplex): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, reason] =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'the request headers are too large']
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'the request was not received in time']
        : [400, 'malformed HTTP request'];
  const body = JSON.stringify({ error: plain(Errors.apiBadRequest({ reason })) });
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(error);
}

function plain(error: DevgateError): { code: string; message: string; hint?: string } {
  return { code: error.code, message: error.message, hint: error.hint };
}

function sendError(reply: FastifyReply, error: ApiError): FastifyReply {
  return reply
    .status(error.status)
    .type('application/json')
    .send({ error: { code: error.code, message: error.message, ...(error.hint ? { hint: error.hint } : {}) } });
}
