/**
 * Deny lists and remembered answers through the API: reading them on both sockets, changing them on
 * the read-write one. Every change is written together with its audit row in one store transaction
 * (a crash never leaves a change unaudited, nor an audit row for a change that did not happen), then
 * published as an audit event.
 */
import { createHash } from 'node:crypto';
import { type FastifyInstance, type FastifyRequest } from 'fastify';
import { type DenyListChangeJson, type DenyListJson, type RememberedAnswerJson } from '@devgate/client';
import { DevgateError, Errors, INTERFACE_CODE_PATTERN, errorCode } from '@devgate/core';
import {
  type AuditEntry,
  type AuditEntryInput,
  type DaemonEvents,
  type PolicyAnswer,
  type SqliteStateStore,
  recordable,
} from '@devgate/service';

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

export type DenyOp = 'add' | 'remove' | 'replace';
export type ForgetScope =
  { readonly all: true } | { readonly id: string } | { readonly frontend?: string; readonly devclass?: string };

/** A remembered answer's id: derived from its scope, so it is stable and never names another answer. */
export function answerId(answer: Pick<PolicyAnswer, 'devclass' | 'backend' | 'portId' | 'deviceId' | 'frontend'>) {
  const key = JSON.stringify([answer.devclass, answer.backend, answer.portId, answer.deviceId, answer.frontend]);
  return createHash('sha256').update(key).digest('hex').slice(0, 12);
}

function answerJson(answer: PolicyAnswer): RememberedAnswerJson {
  return { id: answerId(answer), ...answer };
}

/** Deny lists and remembered answers: read, and changed with an audit row in the same transaction. */
export class PolicyStateService {
  constructor(
    private readonly store: SqliteStateStore,
    private readonly events: DaemonEvents,
  ) {}

  denyLists(): DenyListJson[] {
    return this.store.denyLists.all();
  }

  denyList(frontend: string): DenyListJson {
    return this.store.denyLists.get(frontend);
  }

  /** Adds, removes (unknown patterns are ignored, as in Qubes) or replaces a frontend's patterns. */
  changeDenyList(op: DenyOp, frontend: string, codes: readonly string[], actor: string): DenyListChangeJson {
    const entry = { actor, action: 'deny-list', frontend } as const;
    try {
      const [change, audited] = this.store.transaction(() => {
        const before = this.store.denyLists.get(frontend).patterns;
        const after =
          op === 'add'
            ? this.store.denyLists.add(frontend, codes)
            : op === 'remove'
              ? this.store.denyLists.remove(frontend, codes)
              : this.store.denyLists.set(frontend, codes);
        const added = after.patterns.filter((p) => !before.includes(p));
        const removed = before.filter((p) => !after.patterns.includes(p));
        const row = this.store.audit.append({
          ...entry,
          outcome: 'ok',
          reason: describeChange(op, added, removed),
          details: { op, requested: [...codes], added, removed, patterns: after.patterns },
        });
        return [{ denyList: after, added, removed }, row] as const;
      });
      this.publish(audited);
      return change;
    } catch (error) {
      this.auditFailure(error, { ...entry, details: { op, requested: [...codes] } });
      throw error;
    }
  }

  answers(filter: { frontend?: string; devclass?: string }): RememberedAnswerJson[] {
    return this.store.answers.list(filter).map(answerJson);
  }

  /** Forgets remembered answers (expired ones too); one audit row per answer forgotten. */
  forgetAnswers(scope: ForgetScope, actor: string): RememberedAnswerJson[] {
    const [forgotten, audited] = this.store.transaction(() => {
      const filter = 'all' in scope || 'id' in scope ? {} : scope;
      let chosen = this.store.answers.list({ ...filter, includeExpired: true });
      if ('id' in scope) {
        chosen = chosen.filter((a) => answerId(a) === scope.id);
        if (chosen.length === 0) throw Errors.answerNotFound({ id: scope.id });
      }
      const rows = chosen.map((answer) => {
        this.store.answers.forget(answer);
        return this.store.audit.append({
          actor,
          action: 'answer',
          devclass: answer.devclass,
          backend: answer.backend,
          portId: answer.portId,
          deviceId: answer.deviceId,
          frontend: answer.frontend,
          outcome: 'ok',
          reason: `forgot the remembered answer '${answer.verdict}'`,
          details: { op: 'forget', id: answerId(answer), verdict: answer.verdict, createdAt: answer.createdAt },
        });
      });
      return [chosen.map(answerJson), rows] as const;
    });
    for (const row of audited) this.publish(row);
    return forgotten;
  }

  private publish(entry: AuditEntry): void {
    this.events.publish({ type: 'audit', entry });
  }

  /**
   * A refused or failed change is audited too, unless the store itself is what failed. Recordable:
   * the message echoes the request, and what the store refused in it would fail the record as well.
   */
  private auditFailure(error: unknown, entry: Omit<AuditEntryInput, 'outcome'>): void {
    const code = errorCode(error);
    const outcome = error instanceof DevgateError && !code.startsWith('DG_STATE_') ? 'denied' : 'error';
    try {
      this.publish(this.store.audit.append(recordable({ ...entry, outcome, code, reason: (error as Error).message })));
    } catch {
      // the store is unusable: the original error says so
    }
  }
}

function describeChange(op: DenyOp, added: readonly string[], removed: readonly string[]): string {
  const parts = [
    ...(added.length ? [`added ${added.join(' ')}`] : []),
    ...(removed.length ? [`removed ${removed.join(' ')}`] : []),
  ];
  return `${op}: ${parts.length ? parts.join('; ') : 'no change'}`;
}

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
