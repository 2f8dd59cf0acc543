import { type Disposable } from '@devgate/core';
import { type AuditEntry, type SqliteStateStore } from '@devgate/service';

const DAY_MS = 86_400_000;

export interface AuditRetentionOptions {
  /** Entries stamped more than this many days before now, and before the newest entry, go. */
  readonly keepDays: number;
  /** Default: the system clock. */
  readonly now?: () => Date;
  /** The entry that says how many went (devgated publishes it as an audit event). */
  readonly pruned: (entry: AuditEntry) => void;
  /** Pruning failed (a locked database): the log is kept as it is until the next time. */
  readonly failed: (error: unknown) => void;
  /** The clock is more than keepDays past the newest entry, or a callback above threw. */
  readonly warn: (fields: object, message: string) => void;
}

/**
 * The audit log's retention (the configuration's `audit.keepDays`): entries older than that are
 * pruned when devgated starts and about once a day while it runs, so the log does not grow without
 * bound on a machine that never restarts it. The timer never keeps devgated alive.
 *
 * "Older" is counted from the newest entry when the clock is past it: a clock set years ahead (a
 * dead RTC battery) must not make the whole history look expired. The last keepDays of what was
 * written always stay.
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
    // Run on a timer, a callback that throws (an event subscriber's bug) would be an uncaught
    // exception, and devgated would exit.
    try {
      this.pruneOnce();
    } catch (error) {
      this.options.warn({ err: error }, 'audit retention: a callback failed');
    }
  }

  private pruneOnce(): void {
    const { keepDays } = this.options;
    const now = (this.options.now?.() ?? new Date()).getTime();
    let newest: string | undefined;
    let entry: AuditEntry | undefined;
    try {
      newest = this.store.audit.query({ order: 'desc', limit: 1 })[0]?.at;
      const before = new Date(Math.min(now, newest ? Date.parse(newest) : now) - keepDays * DAY_MS);
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
    // Said only when it kept something the clock alone would have pruned: a quiet host writes no
    // entry for days, and that is no clock to warn of.
    if (newest && now - Date.parse(newest) > keepDays * DAY_MS)
      this.options.warn(
        { newest, now: new Date(now).toISOString(), keepDays },
        'the clock is more than keepDays past the newest audit entry: retention counts from that entry',
      );
    if (entry) this.options.pruned(entry);
  }

  dispose(): void {
    clearInterval(this.timer);
  }
}
