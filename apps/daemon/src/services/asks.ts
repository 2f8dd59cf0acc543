import { randomUUID } from 'node:crypto';
import { type DeviceInfo, Errors, portLabel } from '@devgate/core';
import { type Ask, type DaemonEvents, type SqliteStateStore } from '@devgate/service';

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
    if (answer.remember) {
      const frontends = answer.frontend ? [answer.frontend] : pending.ask.candidates;
      for (const frontend of frontends) {
        this.store.answers.remember({
          devclass: pending.device.port.devclass,
          backend: pending.device.port.backend,
          portId: '*',
          deviceId: pending.device.deviceId,
          frontend,
          verdict: answer.verdict,
        });
      }
    }
    this.settle(id, answer);
    return pending.ask;
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
