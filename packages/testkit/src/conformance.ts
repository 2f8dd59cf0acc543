import { of } from 'rxjs';
import { type DeviceClassDriver, type DeviceSource, HostTree } from '@devgate/core';
import {
  type AttachOptionsUnderTest,
  ConformanceError,
  checkAttachSpecs,
  checkDeterminism,
  checkDiscovery,
  checkDispose,
  checkHostileStrings,
  checkHotplug,
  checkManifest,
} from './conformance-checks.js';

export interface ConformanceSubject {
  createDriver(): DeviceClassDriver;
  /** Host trees that hold devices of the driver's class, named (recordings of real machines). */
  trees(): Record<string, HostTree>;
  /** Longest text a driver may emit (sanitizeText's bound, or a path); the kernel's 4,096 bounds it anyway. */
  maxStringLength?: number;
  /**
   * Trees before and after a plug or an unplug, named. Without them, each tree is emptied and
   * filled again (every device removed, then added).
   */
  hotplug?(): Record<string, { readonly before: HostTree; readonly after: HostTree }>;
  /** Attach options to try on the driver's devices (when it has attachSpec). */
  attachOptions?: AttachOptionsUnderTest;
}

/** A source that replays one tree, for driving a driver without I/O. */
export function staticSource(tree: HostTree, backend = 'dom0', id = 'static'): DeviceSource {
  return { id, backend, hotplug: 'static', trees$: of(tree), dispose: () => undefined };
}

/** Every check, by name: `[check, run]`, in the order the suite runs them. */
function checks(subject: ConformanceSubject): [string, () => Promise<void> | void][] {
  const trees = Object.entries(subject.trees());
  const pairs = subject.hotplug
    ? Object.entries(subject.hotplug())
    : trees.flatMap(([name, tree]): [string, { before: HostTree; after: HostTree }][] => [
        [`${name}, unplugged`, { before: tree, after: new HostTree([], tree.usage) }],
        [`${name}, plugged`, { before: new HostTree([], tree.usage), after: tree }],
      ]);
  return [
    ['has an explicit id and a manifest for this plugin API', () => checkManifest(subject.createDriver())],
    ...trees.flatMap(([name, tree]): [string, () => Promise<void>][] => [
      [
        `on ${name}: emits one snapshot per tree, with no device the kernel leaves out`,
        () => checkDiscovery(subject.createDriver(), tree),
      ],
      [
        `on ${name}: is deterministic: the same tree gives the same devices`,
        () => checkDeterminism(subject.createDriver, tree),
      ],
      [
        `on ${name}: keeps hostile strings in everything it reads inert and bounded`,
        () => checkHostileStrings(subject.createDriver, tree, subject.maxStringLength),
      ],
      [
        `on ${name}: unsubscribed, leaves no subscription and no open handle`,
        () => checkDispose(subject.createDriver(), tree),
      ],
      [
        `on ${name}: attach specs: valid options accepted, invalid refused with catalogue codes, no host path`,
        () => checkAttachSpecs(subject.createDriver, tree, subject.attachOptions),
      ],
    ]),
    ...pairs.map(([name, { before, after }]): [string, () => Promise<void>] => [
      `hotplug (${name}): a snapshot per tree, with what was added and removed`,
      () => checkHotplug(subject.createDriver, before, after),
    ]),
  ];
}

/**
 * The contract every device-class driver keeps, as a jest suite. Third-party drivers call it from a
 * spec file with their own recordings: `describeDriverConformance('usb', { createDriver, trees })`.
 * A failure names the defect (`discovery: ... is listed twice`, `dispose: leaking subscription ...`).
 */
export function describeDriverConformance(name: string, subject: ConformanceSubject): void {
  describe(`driver conformance: ${name}`, () => {
    for (const [title, run] of checks(subject)) it(title, async () => run(), 30_000);
  });
}

/** Runs every check outside jest; resolves with what failed (empty: the driver conforms). */
export async function checkDriverConformance(subject: ConformanceSubject): Promise<ConformanceError[]> {
  const failures: ConformanceError[] = [];
  for (const [, run] of checks(subject)) {
    try {
      await run();
    } catch (error) {
      failures.push(error instanceof ConformanceError ? error : new ConformanceError('driver', String(error)));
    }
  }
  return failures;
}
