import { randomUUID } from 'node:crypto';
import { type DeviceInfo, Errors, portLabel } from '@devgate/core';
import { type Ask, type DaemonEvents, type SqliteStateStore } from '@devgate/service';
import { answerId } from './policy-state-service.js';

export interface AskAnswer {
  readonly verdict: 'allow' | 'deny';
  readonly frontend?: string;
  readonly remember?: boolean;
  readonly by: string;
}

interface Pending {
  readonly ask: Ask;
  readonly device: DeviceInfo;
  readonly resolve: (answer: AskAnswer) => void;
  readonly timer: NodeJS.Timeout;
}

/**
 * Questions for a person (the tray, `devgate ask answer`), with a timeout that denies. An answer can
 * be remembered: it becomes a policy answer in the store and is not asked again.
 */
export class AskService {
  private readonly pending = new Map<string, Pending>();

  constructor(
    private readonly store: SqliteStateStore,
    private readonly events: DaemonEvents,
    private readonly timeoutMs: number,
  ) {}

  list(): Ask[] {
    return [...this.pending.values()].map((p) => p.ask);
  }

  ask(device: DeviceInfo, candidates: readonly string[], reason: string, description: string): Promise<AskAnswer> {
    const now = Date.now();
    const ask: Ask = {
      id: randomUUID(),
      devclass: device.port.devclass,
      device: portLabel(device.port),
      deviceId: device.deviceId,
      description,
      candidates,
      reason,
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + this.timeoutMs).toISOString(),
      rememberable: true,
    };
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.settle(ask.id, { verdict: 'deny', by: 'timeout' }), this.timeoutMs);
      timer.unref();
      this.pending.set(ask.id, { ask, device, resolve, timer });
      this.events.publish({ type: 'ask', ask });
    });
  }

  answer(id: string, answer: AskAnswer): Ask {
    const pending = this.pending.get(id);
    if (!pending) throw Errors.askNotFound({ id });
    if (answer.frontend !== undefined && !pending.ask.candidates.includes(answer.frontend)) {
      throw Errors.apiBadRequest({ reason: `'${answer.frontend}' is not one of ${pending.ask.candidates.join(', ')}` });
    }
    if (answer.remember)
      this.remember(pending.device, answer.frontend ? [answer.frontend] : pending.ask.candidates, answer);
    this.settle(id, answer);
    return pending.ask;
  }

  /**
   * A standing answer decides every later ask about the device without anyone asked: who gave it is
   * audited, in the same transaction (never one without the other), as forgetting it is.
   */
  private remember(device: DeviceInfo, frontends: readonly string[], answer: AskAnswer): void {
    const audited = this.store.transaction(() =>
      frontends.map((frontend) => {
        const remembered = this.store.answers.remember({
          devclass: device.port.devclass,
          backend: device.port.backend,
          portId: '*',
          deviceId: device.deviceId,
          frontend,
          verdict: answer.verdict,
        });
        return this.store.audit.append({
          actor: answer.by,
          action: 'answer',
          devclass: device.port.devclass,
          backend: device.port.backend,
          portId: device.port.portId,
          deviceId: device.deviceId,
          frontend,
          outcome: 'ok',
          reason: `remembered the answer '${answer.verdict}' for this device, in any port`,
          details: { op: 'remember', id: answerId(remembered), verdict: answer.verdict, portId: remembered.portId },
        });
      }),
    );
    for (const entry of audited) this.events.publish({ type: 'audit', entry });
  }

  private settle(id: string, answer: AskAnswer): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    clearTimeout(pending.timer);
    this.pending.delete(id);
    this.events.publish({ type: 'ask-resolved', id, verdict: answer.verdict, by: answer.by });
    pending.resolve(answer);
  }

  /** Denies everything pending (the daemon is stopping). */
  dispose(): void {
    for (const id of [...this.pending.keys()]) this.settle(id, { verdict: 'deny', by: 'shutdown' });
  }
}
