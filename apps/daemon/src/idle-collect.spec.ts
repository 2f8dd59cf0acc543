import * as vm from 'node:vm';
import { DEVICE_QUIET_MS, IdleCollector, QUIET_MS, compactingCollection } from './idle-collect';

const MiB = 1024 * 1024;

describe('the collection once big work is over', () => {
  let clock = 0;
  let heap = { total_physical_size: 40 * MiB, used_heap_size: 20 * MiB };
  let collections = 0;
  const collector = () =>
    new IdleCollector(
      () => {
        collections++;
        clock += 100; // the collection's pause
        heap = { total_physical_size: 22 * MiB, used_heap_size: 20 * MiB };
      },
      () => heap,
      () => clock,
    );
  const advance = (ms: number) => {
    clock += ms;
    jest.advanceTimersByTime(ms);
  };

  beforeEach(() => {
    jest.useFakeTimers();
    clock = 0;
    collections = 0;
    heap = { total_physical_size: 40 * MiB, used_heap_size: 20 * MiB };
  });
  afterEach(() => jest.useRealTimers());

  it('waits until no more work came for the quiet time, then collects once', () => {
    const idle = collector();
    idle.after();
    advance(QUIET_MS - 50);
    idle.after();
    advance(QUIET_MS - 50);
    expect(collections).toBe(0);
    advance(50);
    expect(collections).toBe(1);
    idle.dispose();
  });

  it('collects only when the heap grew since the last collection, and not too often', () => {
    const idle = collector();
    idle.after();
    advance(QUIET_MS);
    expect(collections).toBe(1);
    // Grown again right away: collected, but not before 20 times the last pause (2 s at least).
    heap = { total_physical_size: 40 * MiB, used_heap_size: 20 * MiB };
    idle.after();
    advance(QUIET_MS);
    expect(collections).toBe(1);
    advance(2_000);
    expect(collections).toBe(2);
    // Grown by less than 4 MiB over what was live: nothing to give back.
    heap = { total_physical_size: 23 * MiB, used_heap_size: 21 * MiB };
    idle.after();
    advance(5_000);
    expect(collections).toBe(2);
    idle.dispose();
  });

  it('waits while device events keep coming, and is not started by them', () => {
    const idle = collector();
    idle.postpone();
    advance(10_000);
    expect(collections).toBe(0);
    idle.after(2_000);
    for (let t = 0; t < 3_000; t += 100) {
      advance(100);
      idle.postpone();
    }
    // A pause in the events shorter than a burst's own is not quiet yet.
    advance(DEVICE_QUIET_MS - 100);
    expect(collections).toBe(0);
    advance(100);
    expect(collections).toBe(1);
    idle.dispose();
  });

  it('does nothing once disposed', () => {
    const idle = collector();
    idle.after();
    idle.dispose();
    advance(10_000);
    idle.after();
    advance(10_000);
    expect(collections).toBe(0);
  });

  it('leaves no gc function and no changed flag behind', () => {
    const live = () => Object.keys(globalThis).includes('gc');
    const before = live();
    compactingCollection();
    expect(live()).toBe(before);
    // A context made after it has no gc either (--expose-gc was set back).
    expect(vm.runInNewContext('typeof gc')).toBe('undefined');
  });
});
