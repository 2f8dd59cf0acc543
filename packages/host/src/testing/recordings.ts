// Test helpers of this package's specs. host cannot use @devgate/testkit (testkit depends on host),
// so the recordings' path is spelled out here once: shared/ sits beside the repository.
import * as path from 'node:path';
import { DevgateError } from '@devgate/core';

export const RECORDED_DIR = path.join(__dirname, '../../../../../shared/fixtures/recorded');

export const recorded = (name: string) => path.join(RECORDED_DIR, name);

/** Expects `fn` to refuse its input with DG_RECORDING_UNREADABLE and a reason matching `reason`. */
export function expectRecordingError(fn: () => unknown, reason: RegExp): void {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(DevgateError);
    expect((error as DevgateError).code).toBe('DG_RECORDING_UNREADABLE');
    expect((error as Error).message).toMatch(reason);
    return;
  }
  throw new Error('expected a DG_RECORDING_UNREADABLE error');
}
