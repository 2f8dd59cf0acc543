/**
 * docs/openapi.json against the API as built:
 *  - every route buildApi registers, on the read-only and on the read-write instance, is documented
 *    with the sockets that serve it (`x-devgate-sockets`), and every documented operation exists
 *    (HEAD is implied by GET);
 *  - the documented request schemas are the ones enforced: each example passes validation, and for
 *    every property, boundary and sample value the server accepts exactly what the document accepts;
 *  - answers fit the documented response schemas (errors the Error shape), and server-sent events
 *    the DaemonEvent schema, with the event types of @devgate/service's daemon-events.ts.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { type FastifyInstance } from 'fastify';
import { Subject } from 'rxjs';
import { INTERFACE_CODE_PATTERN } from '@devgate/core';
import { type ApiContext, buildApi } from './server.js';
import {
  ApiClient,
  cleanupHarness,
  harnessConfig,
  registerVms,
  makeTempDir,
  request,
  startInProcess,
} from '../testing/daemon-harness.js';

jest.setTimeout(30_000);

type Schema = Record<string, unknown>;
interface Operation {
  readonly method: string;
  /** fastify's form: `/v1/asks/:id/answer` */
  readonly url: string;
  readonly op: Schema;
}

const doc = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../../docs/openapi.json'), 'utf8')) as Schema;
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
const operations: Operation[] = Object.entries(doc.paths as Record<string, Schema>).flatMap(([p, item]) =>
  Object.entries(item)
    .filter(([method]) => METHODS.includes(method))
    .map(([method, op]) => ({ method: method.toUpperCase(), url: p.replace(/\{(\w+)\}/g, ':$1'), op: op as Schema })),
);

function resolve(schema: Schema): Schema {
  const ref = schema.$ref as string | undefined;
  if (!ref) return schema;
  return resolve(
    ref
      .slice(2)
      .split('/')
      .reduce<Schema>((node, key) => node[key] as Schema, doc),
  );
}

/**
 * The part of JSON Schema 2020-12 the document uses; returns what is wrong, or undefined. The one
 * format used, date-time, is checked as RFC 3339 requires (a time zone).
 */
function problem(schema: Schema, value: unknown, at = '$'): string | undefined {
  const s = resolve(schema);
  const types = s.type === undefined ? [] : ([] as unknown[]).concat(s.type);
  const typeOf = (v: unknown) =>
    v === null ? 'null' : Array.isArray(v) ? 'array' : Number.isInteger(v) ? 'integer' : typeof v;
  if (types.length > 0 && !types.some((t) => t === typeOf(value) || (t === 'number' && typeof value === 'number'))) {
    return `${at}: ${typeOf(value)} is not ${types.join('|')}`;
  }
  if (s.const !== undefined && value !== s.const) return `${at}: not ${JSON.stringify(s.const)}`;
  if (s.enum && !(s.enum as unknown[]).includes(value)) return `${at}: ${JSON.stringify(value)} not in enum`;
  if (typeof value === 'string') {
    const length = [...value].length;
    if (typeof s.minLength === 'number' && length < s.minLength) return `${at}: shorter than ${s.minLength}`;
    if (typeof s.maxLength === 'number' && length > s.maxLength) return `${at}: longer than ${s.maxLength}`;
    if (typeof s.pattern === 'string' && !new RegExp(s.pattern, 'u').test(value)) return `${at}: does not match`;
    const rfc3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/i;
    if (s.format === 'date-time' && !(rfc3339.test(value) && !Number.isNaN(Date.parse(value)))) {
      return `${at}: not a date-time`;
    }
  }
  if (typeof value === 'number' && typeof s.minimum === 'number' && value < s.minimum) return `${at}: < ${s.minimum}`;
  if (Array.isArray(value)) {
    if (typeof s.minItems === 'number' && value.length < s.minItems) return `${at}: fewer than ${s.minItems} items`;
    if (typeof s.maxItems === 'number' && value.length > s.maxItems) return `${at}: more than ${s.maxItems} items`;
    const distinct = new Set(value.map((item) => JSON.stringify(item)));
    if (s.uniqueItems === true && distinct.size !== value.length) return `${at}: items not unique`;
  }
  if (Array.isArray(value) && s.items) {
    for (const [i, item] of value.entries()) {
      const p = problem(s.items as Schema, item, `${at}[${i}]`);
      if (p) return p;
    }
  }
  if (typeOf(value) === 'object') {
    const object = value as Record<string, unknown>;
    const keys = Object.keys(object);
    if (typeof s.maxProperties === 'number' && keys.length > s.maxProperties) return `${at}: too many properties`;
    for (const key of (s.required as string[] | undefined) ?? []) if (!(key in object)) return `${at}.${key}: missing`;
    const properties = (s.properties ?? {}) as Record<string, Schema>;
    for (const key of keys) {
      if (s.propertyNames) {
        const p = problem(s.propertyNames as Schema, key, `${at} key ${JSON.stringify(key)}`);
        if (p) return p;
      }
      const sub = (properties[key] ?? s.additionalProperties) as Schema | boolean | undefined;
      if (sub === false) return `${at}.${key}: not allowed`;
      if (sub && typeof sub === 'object') {
        const p = problem(sub as Schema, object[key], `${at}.${key}`);
        if (p) return p;
      }
    }
  }
  if (s.oneOf) {
    const matching = (s.oneOf as Schema[]).filter((option) => problem(option, value, at) === undefined);
    if (matching.length !== 1) return `${at}: matches ${matching.length} of oneOf`;
  }
  return undefined;
}

/** `GET /v1/health`-style route keys from fastify's printRoutes tree. */
function registeredRoutes(app: FastifyInstance): Set<string> {
  const routes = new Set<string>();
  const prefixes: string[] = [];
  for (const line of app.printRoutes({ commonPrefix: false }).split('\n')) {
    const match = /^((?:[│ ] {3})*)[├└]── (\S+)(?: \(([A-Z, ]+)\))?$/.exec(line);
    if (!match) continue;
    const depth = match[1].length / 4;
    prefixes.length = depth;
    const url = (depth > 0 ? prefixes[depth - 1] : '') + match[2];
    prefixes[depth] = url;
    for (const method of match[3]?.split(', ') ?? []) routes.add(`${method} ${url}`);
  }
  return routes;
}

describe('docs/openapi.json', () => {
  const fake = { manager: { events$: new Subject() } } as unknown as ApiContext;

  it('is OpenAPI 3.1 and documents exactly the routes each socket serves', async () => {
    expect(doc.openapi).toMatch(/^3\.1\./);
    for (const readOnly of [true, false]) {
      const app = buildApi(fake, { readOnly, actor: () => 'test' });
      await app.ready();
      try {
        const registered = registeredRoutes(app);
        for (const route of registered) {
          const [method, url] = route.split(' ');
          expect({ route, known: app.hasRoute({ method: method as 'GET', url }) }).toEqual({ route, known: true });
        }
        const socket = readOnly ? 'devgate.sock' : 'devgate.sock.rw';
        const documented = operations
          .filter((o) => (o.op['x-devgate-sockets'] as string[]).includes(socket))
          .flatMap((o) => [`${o.method} ${o.url}`, ...(o.method === 'GET' ? [`HEAD ${o.url}`] : [])]);
        expect([...registered].sort()).toEqual([...new Set(documented)].sort());
        // And what one socket leaves out is really absent there.
        for (const o of operations) {
          const served = (o.op['x-devgate-sockets'] as string[]).includes(socket);
          expect({
            route: `${o.method} ${o.url}`,
            served: app.hasRoute({ method: o.method as 'GET', url: o.url }),
          }).toEqual({
            route: `${o.method} ${o.url}`,
            served,
          });
        }
      } finally {
        await app.close();
      }
    }
    expect(operations.length).toBeGreaterThanOrEqual(12);
  });

  describe('against a running devgated', () => {
    let client: ApiClient;
    let daemon: Awaited<ReturnType<typeof startInProcess>>;

    beforeAll(async () => {
      // The real host's devices, so that the Device schema meets real records.
      const config = harnessConfig(makeTempDir('devgated-openapi-'), { backends: { dom0: { source: 'local' } } });
      // The VM assignments go to; none is named work, for the refusals of an unknown VM.
      registerVms(config, ['vault']);
      daemon = await startInProcess(config);
      client = new ApiClient(config.socket);
    });

    afterAll(() => cleanupHarness());

    const errorSchema = { $ref: '#/components/schemas/Error' };
    /** Sends a request; every answer must fit the schema documented for its status. */
    async function send(o: Operation, body: unknown, query?: Record<string, string>) {
      const url = pathOf(o) + (query ? `?${new URLSearchParams(query)}` : '');
      const answer = await request(client.rwSocket, o.method, url, body);
      const json = answer.body as { error?: { code: string } };
      const documented = (o.op.responses as Record<string, Schema>)[String(answer.status)];
      expect({ url, status: answer.status, documented: documented !== undefined }).toEqual({
        url,
        status: answer.status,
        documented: true,
      });
      const schema = answer.status < 300 ? (documented.content as Schema)['application/json'] : { schema: errorSchema };
      expect({ url, problem: problem((schema as Schema).schema as Schema, json) }).toEqual({ url, problem: undefined });
      return {
        status: answer.status,
        refused: answer.status === 400 && json.error?.code === 'DG_API_BAD_REQUEST',
      };
    }

    /** The operation's URL with its path parameters filled in (`override` for the one being probed). */
    function pathOf(o: Operation, override: Record<string, string> = {}): string {
      const fill: Record<string, string> = { id: 'no-such-ask', frontend: 'work', ...override };
      return o.url.replace(/:(\w+)/g, (_, name: string) => encodeURIComponent(fill[name]));
    }

    const STRING_SAMPLES = [
      'a',
      'A',
      'Z9',
      '-',
      '*',
      ' ',
      'a b',
      'a_b',
      'a.b',
      'a:b',
      '+',
      'a/b',
      'é',
      'a\u0000',
      '😀',
      'x\n',
      // Interface patterns (deny lists): good ones and near misses.
      'u03****',
      'b******',
      '?******',
      'i******',
      'U03****',
      'u03***',
      'u03*****',
      'x03****',
      'u0g****',
    ];
    /** Values to try for a property: boundaries, the enum, samples, and wrong types. */
    function candidates(schema: Schema): unknown[] {
      const s = resolve(schema);
      const values: unknown[] = [7, true, null, [], ['a']];
      if (s.type === 'string') values.push({}, ...STRING_SAMPLES, '');
      if (s.type === 'boolean') values.push(true, false, 'true', {});
      for (const bound of [s.minLength, s.maxLength] as (number | undefined)[]) {
        if (bound !== undefined)
          values.push('a'.repeat(Math.max(0, bound - 1)), 'a'.repeat(bound), 'a'.repeat(bound + 1));
      }
      if (s.enum)
        values.push(
          ...(s.enum as unknown[]),
          `${(s.enum as string[])[0]}x`,
          String((s.enum as string[])[0]).toUpperCase(),
        );
      if (s.format === 'date-time')
        values.push('2026-01-01T00:00:00Z', '2026-01-01T00:00:00.000+02:00', 'yesterday', '2026-13-45T00:00:00Z');
      if (typeof s.pattern === 'string' && s.pattern.includes('[0-9]'))
        values.push('0', '1', '10000', '10001', '-1', '1.5', '1e3', '99999999999999999');
      if (s.type === 'array') {
        const items = candidates(s.items as Schema);
        values.push(...items.map((item) => [item]));
        const valid = items.filter((item) => problem(s.items as Schema, item) === undefined);
        if (valid.length >= 2) values.push([valid[0], valid[1]], [valid[0], valid[0]], valid);
      }
      if (s.type === 'object') {
        const many = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, 'v']));
        values.push('x', {}, many(s.maxProperties as number), many((s.maxProperties as number) + 1));
        for (const key of ['read-only', 'bad key', '', 'k'.repeat(64), 'k'.repeat(65), 'ключ', 'a.b_c-d'])
          values.push({ [key]: 'yes' });
        for (const v of ['yes', '', 'a b', 'a\u0000', 'x\u0085', 'x'.repeat(256), 'x'.repeat(257), 5, null])
          values.push({ k: v });
      }
      return values;
    }

    it('enforces exactly the documented request bodies', async () => {
      let probes = 0;
      for (const o of operations.filter((op) => op.op.requestBody)) {
        const media = ((o.op.requestBody as Schema).content as Schema)['application/json'] as Schema;
        const schema = resolve(media.schema as Schema);
        const example = media.example as Record<string, unknown>;
        expect(problem(schema, example)).toBeUndefined();
        expect(await send(o, example)).toMatchObject({ refused: false });
        // Every required property missing, an unknown one, and the body not an object.
        for (const key of (schema.required as string[] | undefined) ?? []) {
          const rest = { ...example };
          delete rest[key];
          expect({ o: o.url, key, ...(await send(o, rest)) }).toMatchObject({ refused: true });
        }
        expect(await send(o, { ...example, unknown: 'x' })).toMatchObject({ refused: true });
        expect(await send(o, [example])).toMatchObject({ refused: true });
        // Every value the document accepts is accepted, every value it refuses is refused.
        for (const [key, property] of Object.entries(schema.properties as Record<string, Schema>)) {
          for (const value of candidates(property)) {
            const expected = problem(schema, { ...example, [key]: value }) !== undefined;
            const { refused } = await send(o, { ...example, [key]: value });
            expect({ route: o.url, key, value, refused }).toEqual({ route: o.url, key, value, refused: expected });
            probes++;
          }
        }
      }
      expect(probes).toBeGreaterThan(300);
    });

    it('enforces exactly the documented query parameters', async () => {
      let probes = 0;
      for (const o of operations.filter((op) => op.method === 'GET' && op.op.parameters)) {
        const parameters = (o.op.parameters as Schema[]).filter((p) => p.in === 'query');
        expect(await send(o, undefined, {})).toMatchObject({ status: 200 });
        expect(await send(o, undefined, { unknown: 'x' })).toMatchObject({ refused: true });
        for (const parameter of parameters) {
          const schema = parameter.schema as Schema;
          for (const value of candidates(schema).filter(
            (v): v is string => typeof v === 'string' && !v.includes('\u0000'),
          )) {
            const expected = problem(schema, value) !== undefined;
            const { refused } = await send(o, undefined, { [parameter.name as string]: value });
            expect({ route: o.url, parameter: parameter.name, value, refused }).toEqual({
              route: o.url,
              parameter: parameter.name,
              value,
              refused: expected,
            });
            probes++;
          }
        }
      }
      expect(probes).toBeGreaterThan(100);
    });

    it('enforces exactly the documented path parameters of reads', async () => {
      let probes = 0;
      for (const o of operations.filter((op) => op.method === 'GET' && op.op.parameters)) {
        for (const parameter of (o.op.parameters as Schema[]).filter((p) => p.in === 'path')) {
          const schema = parameter.schema as Schema;
          // A value with a slash, or none, is another route.
          const values = candidates(schema).filter(
            (v): v is string => typeof v === 'string' && v !== '' && !v.includes('/'),
          );
          for (const value of values) {
            const expected = problem(schema, value) !== undefined;
            const answer = await request(client.rwSocket, 'GET', pathOf(o, { [parameter.name as string]: value }));
            const refused =
              answer.status === 400 &&
              (answer.body as { error?: { code: string } }).error?.code === 'DG_API_BAD_REQUEST';
            expect({ route: o.url, value, refused, ok: answer.status === 200 || refused }).toEqual({
              route: o.url,
              value,
              refused: expected,
              ok: true,
            });
            probes++;
          }
        }
      }
      expect(probes).toBeGreaterThan(20);
    });

    it("validates interface patterns with core's own pattern", () => {
      expect(resolve({ $ref: '#/components/schemas/InterfacePattern' }).pattern).toBe(INTERFACE_CODE_PATTERN);
    });

    it('answers in the documented shapes', async () => {
      const byId = (id: string) => operations.find((o) => o.op.operationId === id)!;
      // Something in each list first.
      await send(byId('assign'), { class: 'block', frontend: 'vault', device: 'dom0:sdz9', only: 'port', options: {} });
      await send(byId('addDenied'), { patterns: ['u03****'] });
      daemon.store.answers.remember({
        devclass: 'usb',
        backend: 'dom0',
        portId: '*',
        deviceId: '1d6b:0002::u090000',
        frontend: 'work',
        verdict: 'deny',
        expiresAt: '2999-01-01T00:00:00.000Z',
      });
      for (const id of [
        'health',
        'listDevices',
        'listDomains',
        'listAssignments',
        'listAsks',
        'queryAudit',
        'listDenyLists',
        'getDenyList',
        'listAnswers',
      ]) {
        expect({ id, ...(await send(byId(id), undefined)) }).toMatchObject({ id, status: 200 });
      }
      const devices = (await client.get<{ devices: unknown[] }>('/v1/devices?all=true')).body;
      expect(devices.devices.length).toBeGreaterThan(0);
      expect(await send(byId('listDevices'), undefined, { all: 'true' })).toMatchObject({ status: 200 });
      // No VM named work here: the VM is checked first, as Qubes' tools do.
      expect(await send(byId('detach'), { class: 'block', frontend: 'work' })).toMatchObject({ status: 404 });
      expect(await send(byId('unassign'), { class: 'block', frontend: 'work' })).toMatchObject({ status: 200 });
      expect(await send(byId('attach'), { class: 'block', frontend: 'work', device: 'dom0:nosuch' })).toMatchObject({
        status: 404,
      });
      expect(await send(byId('removeDenied'), { patterns: ['u03****'] })).toMatchObject({ status: 200 });
      expect(await send(byId('replaceDenyList'), { patterns: [] })).toMatchObject({ status: 200 });
      expect(await send(byId('forgetAnswers'), { all: true })).toMatchObject({ status: 200 });
      expect(await send(byId('forgetAnswers'), { id: '0123456789ab' })).toMatchObject({ status: 404 });
    });

    it('streams the documented events, with the types daemon-events.ts declares', async () => {
      const source = fs.readFileSync(
        path.join(path.dirname(require.resolve('@devgate/service/package.json')), 'src', 'daemon-events.ts'),
        'utf8',
      );
      const union = source.slice(
        source.indexOf('export type DaemonEvent'),
        source.indexOf('export class DaemonEvents'),
      );
      const declared = [...union.matchAll(/readonly type: '([a-z-]+)'/g)].map((m) => m[1]).sort();
      const events = operations.find((o) => o.url === '/v1/events')!.op;
      expect([...(events['x-devgate-event-types'] as string[])].sort()).toEqual(declared);
      const mapping = (resolve({ $ref: '#/components/schemas/DaemonEvent' }).discriminator as Schema).mapping as Schema;
      expect(Object.keys(mapping).sort()).toEqual(declared);

      // A real stream over the read-only socket, and an assignment (one audit event) through .rw.
      const received: { event: string; data: unknown }[] = [];
      const stream = await new Promise<http.IncomingMessage>((resolveStream, reject) => {
        const request = http.get({ socketPath: client.socket, path: '/v1/events', agent: false }, resolveStream);
        request.on('error', reject);
      });
      try {
        expect(stream.headers['content-type']).toBe('text/event-stream');
        let buffer = '';
        stream.on('data', (chunk: Buffer) => {
          buffer += chunk.toString();
          for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const event = /^event: (.+)$/m.exec(block)?.[1];
            const data = /^data: (.+)$/m.exec(block)?.[1];
            if (event && data) received.push({ event, data: JSON.parse(data) });
          }
        });
        await new Promise((r) => setTimeout(r, 50));
        const assigned = await client.post('/v1/assignments', {
          class: 'block',
          frontend: 'vault',
          device: 'dom0:sse1',
          only: 'port',
        });
        expect(assigned.status).toBe(200);
        const deadline = Date.now() + 5_000;
        while (received.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        expect(received.length).toBeGreaterThan(0);
        for (const { event, data } of received) {
          expect((data as { type: string }).type).toBe(event);
          expect(problem({ $ref: '#/components/schemas/DaemonEvent' }, data)).toBeUndefined();
        }
      } finally {
        stream.destroy();
      }
    });
  });
});
