/**
 * Deny lists and remembered answers through the API: reading them on both sockets, changing them on
 * the read-write one. The changes, each with its audit row, are PolicyStateService's
 * (services/policy-state-service.ts).
 */
import { type FastifyInstance, type FastifyRequest } from 'fastify';
import { INTERFACE_CODE_PATTERN } from '@devgate/core';
import { type ForgetScope, type PolicyStateService } from '../services/policy-state-service.js';

// -- schemas (fastify validates every body, query and parameter before a handler runs)

/** Qubes' VM name rule, the one the store enforces (store/validate.ts). */
export const DOMAIN_SCHEMA = {
  type: 'string',
  minLength: 1,
  maxLength: 31,
  pattern: '^[A-Za-z][A-Za-z0-9_.-]*$',
} as const;
const DEVCLASS = { type: 'string', minLength: 1, maxLength: 32, pattern: '^[a-z][a-z0-9-]*$' } as const;
/** Qubes' 7-character interface codes with `*` wildcards, checked with core's own pattern. */
const INTERFACE_PATTERN = { type: 'string', pattern: INTERFACE_CODE_PATTERN } as const;
/** Far more than any real deny list; a bound so that one request stays small. */
export const MAX_PATTERNS = 256;
const patterns = (minItems: number) =>
  ({ type: 'array', minItems, maxItems: MAX_PATTERNS, uniqueItems: true, items: INTERFACE_PATTERN }) as const;
const denyBody = (minItems: number) =>
  ({
    type: 'object',
    required: ['patterns'],
    additionalProperties: false,
    properties: { patterns: patterns(minItems) },
  }) as const;
const frontendParams = {
  type: 'object',
  required: ['frontend'],
  additionalProperties: false,
  properties: { frontend: DOMAIN_SCHEMA },
} as const;
const noQuery = { type: 'object', additionalProperties: false, properties: {} } as const;
const ANSWER_ID = { type: 'string', pattern: '^[0-9a-f]{12}$' } as const;
/** Exactly one scope: everything (`all` alone), one answer (`id` alone), or a frontend and/or a class. */
const forgetBody = {
  type: 'object',
  additionalProperties: false,
  properties: { all: { type: 'boolean', const: true }, id: ANSWER_ID, frontend: DOMAIN_SCHEMA, class: DEVCLASS },
  oneOf: [
    { required: ['all'], maxProperties: 1 },
    { required: ['id'], maxProperties: 1 },
    { required: ['frontend'], properties: { all: false, id: false } },
    { required: ['class'], properties: { all: false, id: false, frontend: false } },
  ],
} as const;

interface FrontendRequest<B = unknown> {
  Params: { frontend: string };
  Body: B;
}

/** The routes: reads on every instance, changes only when it is not read-only. */
export function registerPolicyRoutes(
  app: FastifyInstance,
  service: PolicyStateService,
  options: { readOnly: boolean; actor: (request: FastifyRequest) => string; version: string },
): void {
  const v = options.version;
  app.get(`/${v}/deny`, { schema: { querystring: noQuery } }, async () => ({ denyLists: service.denyLists() }));
  app.get<FrontendRequest>(
    `/${v}/deny/:frontend`,
    { schema: { params: frontendParams, querystring: noQuery } },
    async (request) => ({ denyList: service.denyList(request.params.frontend) }),
  );
  app.get<{ Querystring: { frontend?: string; class?: string } }>(
    `/${v}/answers`,
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { frontend: DOMAIN_SCHEMA, class: DEVCLASS },
        },
      },
    },
    async (request) => ({
      answers: service.answers({ frontend: request.query.frontend, devclass: request.query.class }),
    }),
  );
  if (options.readOnly) return;

  for (const [op, minItems] of [
    ['add', 1],
    ['remove', 1],
    ['replace', 0],
  ] as const) {
    app.post<FrontendRequest<{ patterns: string[] }>>(
      `/${v}/deny/:frontend/${op}`,
      { schema: { params: frontendParams, body: denyBody(minItems) } },
      async (request) =>
        service.changeDenyList(op, request.params.frontend, request.body.patterns, options.actor(request)),
    );
  }
  app.post<{ Body: { all?: true; id?: string; frontend?: string; class?: string } }>(
    `/${v}/answers/forget`,
    { schema: { body: forgetBody } },
    async (request) => {
      const body = request.body;
      const scope: ForgetScope = body.all
        ? { all: true }
        : body.id !== undefined
          ? { id: body.id }
          : { frontend: body.frontend, devclass: body.class };
      return { forgotten: service.forgetAnswers(scope, options.actor(request)) };
    },
  );
}
