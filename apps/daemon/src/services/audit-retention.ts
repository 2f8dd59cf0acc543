import { type Disposable } from '@devgate/core';
import { type AuditEntry, type SqliteStateStore } from '@devgate/service';

const DAY_MS = 86_400_000;

export interface AuditRetentionOptions {
  /** Entries stamped more than this many days ago go. */
  readonly keepDays: number;
  /** Default: the system clock. */
  readonly now?: () => Date;
  /** The entry that says how many went (devgated publishes it as an audit event). */
  readonly pruned: (entry: AuditEntry) => void;
  /** Pruning failed (a locked database): the log is kept as it is until the next time. */
  readonly failed: (error: unknown) => void;
}

/**
 * The audit log's retention (the configuration's `audit.keepDays`): entries older than that are
 * pruned when devgated starts and about once a day while it runs, so the log does not grow without
 * bound on a machine that never restarts it. The timer never keeps devgated alive.
 */
export class AuditRetention implements Disposable {
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly store: SqliteStateStore,
    private readonly options: AuditRetentionOptions,
  ) {}

  start(intervalMs = DAY_MS): void {
    this.prune();
    this.timer = setInterval(() => this.prune(), intervalMs);
    this.timer.unref();
  }

  private prune(): void {
    const { keepDays } = this.options;
    const before = new Date((this.options.now?.() ?? new Date()).getTime() - keepDays * DAY_MS);
    let entry: AuditEntry | undefined;
    try {
      entry = this.store.audit.prune(before, (pruned) => ({
        actor: 'devgated',
        action: 'audit-prune',
        outcome: 'ok',
        reason: `${pruned} audit ${pruned === 1 ? 'entry' : 'entries'} older than ${keepDays} days pruned`,
        details: { pruned, keepDays, before: before.toISOString() },
      }));
    } catch (error) {
      return this.options.failed(error);
    }
    if (entry) this.options.pruned(entry);
  }

  dispose(): void {
    clearInterval(this.timer);
  }
}
