/**
 * Deny lists and remembered answers, for devgated's policy routes and for a removed VM's answers
 * going with it. Every change is written together with its audit row in one store transaction (a
 * crash never leaves a change unaudited, nor an audit row for a change that did not happen), then
 * published as an audit event.
 */
import { createHash } from 'node:crypto';
import { type DenyListChangeJson, type DenyListJson, type RememberedAnswerJson } from '@devgate/client';
import { Errors } from '@devgate/core';
import {
  type AuditEntry,
  type AuditEntryInput,
  type DaemonEvents,
  type PolicyAnswer,
  type SqliteStateStore,
  failureAuditEntry,
} from '@devgate/service';

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
   * A refused or failed change is audited too, as a device's is, unless the store itself is what
   * failed. Recordable: the message echoes the request, and what the store refused in it would fail
   * the record as well.
   */
  private auditFailure(error: unknown, entry: Omit<AuditEntryInput, 'outcome'>): void {
    try {
      this.publish(this.store.audit.append(failureAuditEntry(error, entry)));
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
