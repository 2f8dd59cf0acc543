import * as v8 from 'node:v8';
import * as vm from 'node:vm';

/** How long a list answer's collection waits for more work: a tray listing several classes is one. */
export const QUIET_MS = 200;
/**
 * How long device events hold a pending collection off: a burst of new partitions pauses for a
 * few hundred ms while udevd's workers catch up, and its next events must not wait for a pause.
 */
export const DEVICE_QUIET_MS = 1_000;
/** At least this long between two collections, and at least 20 times the last one's pause. */
const MIN_INTERVAL_MS = 2_000;
/** Only worth it when the heap holds this much more than the live data of the last collection. */
const GROWTH_BYTES = 4 * 1024 * 1024;

/** What the collector reads of the heap (v8.getHeapStatistics' fields). */
export interface HeapSizes {
  readonly total_physical_size: number;
  readonly used_heap_size: number;
}

/**
 * A full, compacting garbage collection once a burst of work is over (the start, a list answer
 * made), so that V8 gives back the old generation's pages the burst's garbage filled. V8 collects
 * when it needs room, not when the process goes quiet, and its own collections leave live objects
 * spread over the pages: after devgated has listed 10,000 devices its heap stayed at the size the
 * listing grew it to, 20 to 30 MiB more than what is live (ADR 0015). `after()` costs a timer and
 * can be called per piece of work; the collection runs once nothing more came for the quiet time,
 * only when the heap grew by GROWTH_BYTES since the last one, and not more often than
 * MIN_INTERVAL_MS or 20 times its own pause (about 100 ms with 10,000 devices): at most 5% of the
 * time of a daemon that keeps making big answers.
 */
export class IdleCollector {
  private timer?: NodeJS.Timeout;
  private nextAllowed = 0;
  private liveAfterLast = 0;
  private disposed = false;

  constructor(
    private readonly collect: () => void = compactingCollection,
    private readonly heap: () => HeapSizes = () => v8.getHeapStatistics(),
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Big work was done: collect once nothing more came for `quietMs`. */
  after(quietMs = QUIET_MS): void {
    if (this.disposed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.run(), Math.max(quietMs, this.nextAllowed - this.now()));
    // Never what keeps the process alive.
    this.timer.unref();
  }

  /**
   * Device events are coming (a hotplug burst): a pending collection waits until they pause, so its
   * pause (up to 190 ms with 10,000 devices) never holds up their reports.
   */
  postpone(quietMs = DEVICE_QUIET_MS): void {
    if (this.timer) this.after(quietMs);
  }

  private run(): void {
    this.timer = undefined;
    if (this.heap().total_physical_size < this.liveAfterLast + GROWTH_BYTES) return;
    const start = this.now();
    this.collect();
    const end = this.now();
    this.nextAllowed = end + Math.max(MIN_INTERVAL_MS, 20 * (end - start));
    this.liveAfterLast = this.heap().used_heap_size;
  }

  dispose(): void {
    this.disposed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/**
 * One full collection that compacts every page (`--compact-on-every-full-gc`, for this collection
 * only): V8's own choice compacts only pages it finds fragmented enough, and gave back about 10 MiB
 * less (with 10,000 devices: 99 to 105 MiB of RSS against 89 to 91). A second collection after
 * it gave nothing more. V8's `gc()` exists only in contexts made while `--expose-gc` is set: one is
 * made for the call and dropped with it, and the flag is set back, so no other code finds a `gc`.
 */
export function compactingCollection(): void {
  v8.setFlagsFromString('--expose-gc');
  let gc: () => void;
  try {
    gc = vm.runInNewContext('gc') as () => void;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
  v8.setFlagsFromString('--compact-on-every-full-gc');
  try {
    gc();
  } finally {
    v8.setFlagsFromString('--no-compact-on-every-full-gc');
  }
}
