/**
 * The driver contract, check by check, as plain functions: each resolves when the driver keeps that
 * part of the contract and rejects with a ConformanceError whose message names the defect (so a
 * third-party author reads "listed twice" or "leaking subscription", not a diff). The jest suite
 * (`describeDriverConformance`) and `checkDriverConformance` run them. What the kernel checks of every
 * device a driver lists, they check with the kernel's own code: a driver that passes is not faulted.
 */
import { AsyncLocalStorage, createHook } from 'node:async_hooks';
import { BehaviorSubject, Observable, type Subscription } from 'rxjs';
import {
  type AttachSpec,
  type DeviceClassDriver,
  type DeviceInfo,
  type DeviceSource,
  DevgateError,
  DriverContractError,
  Errors,
  HostTree,
  QEMU_DEVICE_KIND,
  type RawDeviceRecord,
  SUPPORTED_PLUGIN_API_VERSIONS,
  checkQemuDeviceParams,
  invalidDevicesError,
  portKey,
  snapshotChecker,
} from '@devgate/core';
import { HOSTILE_STRINGS, UNSAFE_CHARACTERS, allStrings } from './hostile.js';

export class ConformanceError extends Error {
  constructor(
    /** Which part of the contract: discovery, determinism, hostile-strings, hotplug, dispose, attach. */
    readonly check: string,
    message: string,
  ) {
    super(`${check}: ${message}`);
    this.name = 'ConformanceError';
  }
}

export interface AttachOptionsUnderTest {
  /** Option sets the driver must accept for some device (default: no options). */
  readonly valid?: readonly Readonly<Record<string, string>>[];
  /** Option sets it must refuse, with a code from the catalogue (default: an unknown option). */
  readonly invalid?: readonly Readonly<Record<string, string>>[];
}

/** How long a driver has to answer a tree. */
const ANSWER_MS = 10_000;
/** How long after an answer a second, unwanted one is waited for. */
const SETTLE_MS = 30;
const CATALOGUE_CODES = new Set(Object.values(Errors).map((entry) => entry.code));
/** The backend of the kit's sources. */
const BACKEND = 'backend-x';
/**
 * Characters the kernel refuses in text that UNSAFE_CHARACTERS does not name (soft hyphen,
 * zero-width, word joiner, BOM, line and paragraph separators): inside a word, which a trim keeps,
 * after every hostile string, so no record misses them.
 */
const INVISIBLE = 'in\u00ad\u200b\u2060\ufeff\u2028\u2029visible';

/** A source that emits the trees it is given, stays open (as live sources do), and counts subscribers. */
export class ProbeSource implements DeviceSource {
  readonly id = 'conformance';
  readonly hotplug = 'static';
  private readonly trees: BehaviorSubject<HostTree>;
  /** Subscriptions to trees$ that are open now. */
  open = 0;
  readonly trees$: Observable<HostTree>;
  constructor(
    first: HostTree,
    readonly backend = BACKEND,
  ) {
    this.trees = new BehaviorSubject(first);
    this.trees$ = new Observable<HostTree>((subscriber) => {
      this.open++;
      const inner = this.trees.subscribe(subscriber);
      return () => {
        this.open--;
        inner.unsubscribe();
      };
    });
  }
  emit(tree: HostTree): void {
    this.trees.next(tree);
  }
  dispose(): void {}
}

/** Subscribes, and hands out snapshots as they come. */
class Watch {
  readonly snapshots: (readonly DeviceInfo[])[] = [];
  error?: unknown;
  private readonly subscription: Subscription;
  private wake?: () => void;
  constructor(driver: DeviceClassDriver, source: DeviceSource) {
    this.subscription = driver.discover(source).subscribe({
      next: (snapshot) => {
        this.snapshots.push(snapshot);
        this.wake?.();
      },
      error: (error: unknown) => {
        this.error = error;
        this.wake?.();
      },
    });
  }
  /** Waits until there are `count` snapshots (or an error, or the time is up). */
  async until(count: number, ms = ANSWER_MS): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.snapshots.length < count && this.error === undefined && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(50, Math.max(0, deadline - Date.now())));
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    this.wake = undefined;
  }
  stop(): void {
    this.subscription.unsubscribe();
  }
}

async function discoverOnce(driver: DeviceClassDriver, tree: HostTree, check: string, backend?: string) {
  const watch = new Watch(driver, new ProbeSource(tree, backend));
  await watch.until(1);
  watch.stop();
  if (watch.error !== undefined) throw new ConformanceError(check, `discover() errored: ${describe(watch.error)}`);
  if (watch.snapshots.length === 0) throw new ConformanceError(check, `no snapshot within ${ANSWER_MS} ms of a tree`);
  return watch.snapshots[0];
}

/** The id and manifest. */
export function checkManifest(driver: DeviceClassDriver): void {
  const fail = (message: string) => {
    throw new ConformanceError('manifest', message);
  };
  if (typeof driver.id !== 'string' || !/^[a-z][a-z0-9-]{0,31}$/.test(driver.id))
    fail(`id '${String(driver.id)}' is not a class id (a-z, 0-9, -)`);
  if (!SUPPORTED_PLUGIN_API_VERSIONS.includes(driver.manifest?.apiVersion)) {
    fail(
      `apiVersion ${String(driver.manifest?.apiVersion)} is not one this kernel loads (${SUPPORTED_PLUGIN_API_VERSIONS.join(', ')})`,
    );
  }
  if (typeof driver.manifest.description !== 'string' || driver.manifest.description.trim() === '')
    fail('no description');
  for (const id of driver.manifest.dependsOn ?? [])
    if (!/^[a-z][a-z0-9-]{0,31}$/.test(id)) fail(`dependsOn '${id}' is not a class id`);
  for (const s of driver.manifest.subsystems ?? [])
    if (!/^[a-z0-9_-]{1,32}$/.test(s)) fail(`subsystem '${s}' is not a sysfs name`);
}

/**
 * One snapshot per tree, whose every device the kernel lists: unique, valid ports of the driver's
 * class and backend, valid ids and interface codes, plain text, no attachment of its own.
 */
export async function checkDiscovery(driver: DeviceClassDriver, tree: HostTree): Promise<void> {
  const fail = (message: string) => {
    throw new ConformanceError('discovery', message);
  };
  const watch = new Watch(driver, new ProbeSource(tree));
  await watch.until(1);
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  watch.stop();
  if (watch.error !== undefined) fail(`discover() errored: ${describe(watch.error)}`);
  if (watch.snapshots.length !== 1) fail(`${watch.snapshots.length} snapshots for one tree (expected exactly one)`);
  kernelCheck(driver.id, fail)(watch.snapshots[0]);
}

/** The same tree gives the same devices, from a fresh driver too. */
export async function checkDeterminism(createDriver: () => DeviceClassDriver, tree: HostTree): Promise<void> {
  const a = JSON.stringify(await discoverOnce(createDriver(), tree, 'determinism'));
  const b = JSON.stringify(await discoverOnce(createDriver(), tree, 'determinism'));
  if (a !== b) throw new ConformanceError('determinism', 'the same tree gave different devices');
}

/**
 * Every property and attribute the driver reads, made hostile (escapes, controls, markup, bidi,
 * 100 kB): what it emits stays inert and bounded, and it does not fail on it. A backend VM's agent
 * sends every one of them, so none is trusted.
 */
export async function checkHostileStrings(
  driver: () => DeviceClassDriver,
  tree: HostTree,
  maxLength = 4096,
): Promise<void> {
  const fail = (message: string) => {
    throw new ConformanceError('hostile-strings', message);
  };
  const reads = new Map<string, Set<string>>();
  const first = driver();
  await discoverOnce(first, trackReads(tree, reads), 'hostile-strings');
  // One key at a time: a hostile DEVTYPE makes a driver skip the device, which would hide what it
  // does with a hostile name.
  for (const [key, hostile] of hostileTrees(tree, reads)) {
    let devices: readonly DeviceInfo[];
    try {
      devices = await discoverOnce(driver(), hostile, 'hostile-strings');
    } catch (error) {
      return fail(`failed when ${describeKey(key)} is hostile: ${describe(error)}`);
    }
    // Its own check first, for the message: it names where the string is and what it holds.
    for (const [at, text] of allStrings(devices)) {
      if (UNSAFE_CHARACTERS.test(text)) {
        fail(
          `unsanitized string at ${at} when ${describeKey(key)} is hostile: ${JSON.stringify(text.slice(0, 120))} (sanitizeText() it in the parser)`,
        );
      }
      if (text.length > maxLength)
        fail(`unbounded string at ${at} when ${describeKey(key)} is hostile: ${text.length} characters`);
    }
    kernelCheck(first.id, fail, ` when ${describeKey(key)} is hostile`)(devices);
  }
}

/** Hotplug: every tree the source emits gets its own snapshot, equal to discovering that tree alone. */
export async function checkHotplug(
  createDriver: () => DeviceClassDriver,
  before: HostTree,
  after: HostTree,
): Promise<void> {
  const fail = (message: string) => {
    throw new ConformanceError('hotplug', message);
  };
  const expected = [
    await discoverOnce(createDriver(), before, 'hotplug'),
    await discoverOnce(createDriver(), after, 'hotplug'),
  ];
  const source = new ProbeSource(before);
  const driver = createDriver();
  const watch = new Watch(driver, source);
  await watch.until(1);
  source.emit(after);
  // A driver answers a new tree as fast as the first one.
  await watch.until(2, 3_000);
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  watch.stop();
  if (watch.error !== undefined) fail(`discover() errored: ${describe(watch.error)}`);
  if (watch.snapshots.length !== 2) {
    fail(`${watch.snapshots.length} snapshots for two trees (expected one per tree: map every tree the source emits)`);
  }
  // One check for both, as the kernel's for a driver and backend: it remembers ports from pass to pass.
  const check = kernelCheck(driver.id, fail);
  for (const snapshot of watch.snapshots) check(snapshot);
  const keys = (list: readonly DeviceInfo[]) => list.map((d) => portKey(d.port)).sort();
  const [, second] = watch.snapshots;
  if (JSON.stringify(keys(second)) !== JSON.stringify(keys(expected[1]))) {
    const added = keys(expected[1]).filter((k) => !keys(expected[0]).includes(k));
    const removed = keys(expected[0]).filter((k) => !keys(expected[1]).includes(k));
    fail(
      `after the change the driver listed ${keys(second).length} devices, not those of the new tree (added ${added.length}, removed ${removed.length}): stale state kept across trees`,
    );
  }
  if (JSON.stringify(second) !== JSON.stringify(expected[1]))
    fail('the snapshot after a change differs from discovering that tree alone');
}

/**
 * Resource kinds that a driver leaves open if it forgets to clean up (a listening server among
 * them): async_hooks' type, and the name a failure gives it.
 */
const HANDLES = new Map([
  ['Timeout', 'Timeout'],
  ['Immediate', 'Immediate'],
  ['FSEVENTWRAP', 'FSEventWrap'],
  ['STATWATCHER', 'StatWatcher'],
  ['PROCESSWRAP', 'ProcessWrap'],
  ['PIPEWRAP', 'PipeWrap'],
  ['TCPWRAP', 'TCPSocketWrap'],
  ['TCPSERVERWRAP', 'TCPServerWrap'],
  ['PIPESERVERWRAP', 'PipeServerWrap'],
  ['UDPWRAP', 'UDPWrap'],
]);

/**
 * The handles opened by what runs inside `run()` and by everything it schedules, however late,
 * while they stay open and keep the process alive. Only those: a count of the whole process's
 * handles before and after also counts jest's and the kit's own timers, and one of them ending in
 * between hid a leak (or one starting in between was blamed on the driver).
 */
class HandleTracker {
  private readonly scope = new AsyncLocalStorage<true>();
  private readonly open = new Map<number, { kind: string; resource: Partial<{ hasRef(): boolean }> }>();
  private readonly hook = createHook({
    init: (asyncId, type, _triggerAsyncId, resource: Partial<{ hasRef(): boolean }>) => {
      const kind = HANDLES.get(type);
      if (kind !== undefined && this.scope.getStore() === true) this.open.set(asyncId, { kind, resource });
    },
    destroy: (asyncId) => {
      this.open.delete(asyncId);
    },
  });
  constructor() {
    this.hook.enable();
  }
  run<T>(inside: () => T): T {
    return this.scope.run(true, inside);
  }
  /** How many of each kind are open (an unref'd one keeps nothing running, as for Node). */
  counts(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const { kind, resource } of this.open.values()) {
      if (resource.hasRef?.() !== false) counts.set(kind, (counts.get(kind) ?? 0) + 1);
    }
    return counts;
  }
  stop(): void {
    this.hook.disable();
    this.scope.disable();
  }
}

/** Unsubscribing (and `dispose()`, if it has one) leaves no subscription to the source and no open handle. */
export async function checkDispose(driver: DeviceClassDriver, tree: HostTree): Promise<void> {
  const fail = (message: string) => {
    throw new ConformanceError('dispose', message);
  };
  const handles = new HandleTracker();
  try {
    const source = new ProbeSource(tree);
    const watch = handles.run(() => new Watch(driver, source));
    await watch.until(1);
    handles.run(() => {
      watch.stop();
      (driver as Partial<{ dispose(): void }>).dispose?.();
    });
    await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
    if (source.open > 0) {
      fail(
        `leaking subscription: ${source.open} subscription(s) to the source's trees$ still open after unsubscribing from discover()`,
      );
    }
    // A handle the driver closes may end a moment later (a child it killed exits); a leak stays.
    let left = handles.counts();
    for (let retry = 0; left.size > 0 && retry < 5; retry++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      left = handles.counts();
    }
    if (left.size > 0) {
      fail(
        `open handles left after unsubscribing: ${[...left].map(([kind, count]) => `${kind} ×${count}`).join(', ')}`,
      );
    }
  } finally {
    handles.stop();
  }
}

/**
 * attachSpec: valid options accepted, invalid ones refused with the catalogue's codes, and no host
 * path in a spec (the backend's data path gives it, checked against the device), even for devices
 * whose strings are hostile.
 */
export async function checkAttachSpecs(
  createDriver: () => DeviceClassDriver,
  tree: HostTree,
  options: AttachOptionsUnderTest = {},
): Promise<void> {
  const driver = createDriver();
  if (!driver.attachSpec) return;
  const fail = (message: string) => {
    throw new ConformanceError('attach', message);
  };
  const attachSpec = driver.attachSpec.bind(driver);
  const devices = (await discoverOnce(driver, tree, 'attach')).filter((d) => d.hiddenReason === undefined).slice(0, 24);
  if (devices.length === 0) return;
  const attempt = (device: DeviceInfo, opts: Readonly<Record<string, string>>): AttachSpec | DevgateError => {
    try {
      return attachSpec(device, opts);
    } catch (error) {
      if (error instanceof DevgateError && CATALOGUE_CODES.has(error.code)) return error;
      return fail(
        `attachSpec(${portKey(device.port)}, ${JSON.stringify(opts)}) threw outside the catalogue: ${describe(error)}`,
      );
    }
  };
  // A valid option may still be refused for a device's own reasons (read-only, no reset, no data
  // path), with the catalogue's code; never as an option.
  const AS_OPTION = new Set([Errors.unsupportedOption.code, Errors.badOption.code]);
  for (const opts of options.valid ?? [{}]) {
    for (const device of devices) {
      const spec = attempt(device, opts);
      if (spec instanceof DevgateError && AS_OPTION.has(spec.code)) {
        fail(
          `valid options ${JSON.stringify(opts)} were refused for ${portKey(device.port)}: ${spec.code}: ${spec.message}`,
        );
      }
      if (!(spec instanceof DevgateError)) checkSpec(device, spec);
    }
  }
  for (const opts of options.invalid ?? [{ 'no-such-option': 'x' }]) {
    for (const device of devices) {
      if (!(attempt(device, opts) instanceof DevgateError)) {
        fail(
          `invalid options ${JSON.stringify(opts)} were accepted for ${portKey(device.port)} (refuse them with Errors.unsupportedOption)`,
        );
      }
    }
  }
  // Devices with a hostile value in anything the driver reads: still no host path built from it.
  const reads = new Map<string, Set<string>>();
  await discoverOnce(createDriver(), trackReads(tree, reads), 'attach');
  for (const [, hostile] of hostileTrees(tree, reads, '/../../../etc/shadow')) {
    for (const device of (await discoverOnce(createDriver(), hostile, 'attach')).slice(0, 24)) {
      for (const opts of options.valid ?? [{}]) {
        const spec = attempt(device, opts);
        if (!(spec instanceof DevgateError)) checkSpec(device, spec);
      }
    }
  }

  function checkSpec(device: DeviceInfo, spec: AttachSpec): void {
    const at = portKey(device.port);
    if (typeof spec.kind !== 'string' || !/^[a-z][a-z0-9-]{0,31}$/.test(spec.kind)) fail(`spec of ${at} has no kind`);
    for (const [name, value] of Object.entries(spec.params)) {
      if (!['string', 'number', 'boolean'].includes(typeof value))
        fail(`spec.params.${name} of ${at} is not a string, number or boolean`);
      if (typeof value === 'string' && (value.includes('/') || UNSAFE_CHARACTERS.test(value))) {
        fail(
          `host path built from an untrusted string: spec.params.${name} of ${at} is ${JSON.stringify(value.slice(0, 80))} (paths are the backend's: DeviceSource.dataPath)`,
        );
      }
    }
    for (const [name, value] of Object.entries(spec.options)) {
      if (typeof value !== 'string' || UNSAFE_CHARACTERS.test(value) || value.length > 256)
        fail(`spec.options.${name} of ${at} is not a short, safe string`);
    }
    if (spec.kind === QEMU_DEVICE_KIND) {
      const { problem } = checkQemuDeviceParams(spec.params, false);
      if (problem) fail(`qemu-device spec of ${at}: ${problem}`);
    }
  }
}

// -- helpers

/**
 * The kernel's own check of the snapshots a driver lists for the kit's backend, failing with the
 * fault it would report: the kit cannot pass what the kernel leaves out.
 */
function kernelCheck(
  devclass: string,
  fail: (message: string) => never,
  when = '',
): (snapshot: readonly DeviceInfo[]) => void {
  const check = snapshotChecker(devclass, BACKEND);
  return (snapshot) => {
    let problems: readonly string[];
    try {
      ({ problems } = check(snapshot));
    } catch (error) {
      // Not a list of devices.
      if (error instanceof DriverContractError) fail(`the kernel faults it${when}: ${error.reason}`);
      throw error;
    }
    if (problems.length > 0)
      fail(`the kernel faults it${when}: ${invalidDevicesError(devclass, BACKEND, problems).reason}`);
  };
}

/** The tree, recording which properties and attributes of which records the driver reads. */
function trackReads(tree: HostTree, reads: Map<string, Set<string>>): HostTree {
  const note = (devpath: string, key: string) => {
    let keys = reads.get(devpath);
    if (!keys) reads.set(devpath, (keys = new Set()));
    keys.add(key);
  };
  return new HostTree(
    tree.devices().map((record): RawDeviceRecord => ({
      ...record,
      properties: new Proxy(record.properties, {
        get: (target, key) => {
          if (typeof key === 'string' && Object.hasOwn(target, key)) note(record.devpath, `p:${key}`);
          return Reflect.get(target, key);
        },
      }),
      attribute: (name) => {
        const value = record.attribute(name);
        if (value !== undefined) note(record.devpath, `a:${name}`);
        return value;
      },
      entries: record.entries?.bind(record),
      link: record.link?.bind(record),
    })),
    tree.usage,
  );
}

/** For each key the driver read (`p:NAME` a property, `a:name` an attribute), the tree with that key made hostile. */
function* hostileTrees(
  tree: HostTree,
  reads: ReadonlyMap<string, ReadonlySet<string>>,
  extra = '',
): Generator<[string, HostTree]> {
  const keys = [...new Set([...reads.values()].flatMap((k) => [...k]))].sort();
  for (const key of keys) yield [key, poison(tree, reads, key, extra)];
}

/** The tree with one key made hostile wherever the driver read it (one payload per record, cycling). */
function poison(tree: HostTree, reads: ReadonlyMap<string, ReadonlySet<string>>, key: string, extra: string): HostTree {
  let i = 0;
  return new HostTree(
    tree.devices().map((record): RawDeviceRecord => {
      if (!reads.get(record.devpath)?.has(key)) return record;
      const payload = HOSTILE_STRINGS[i++ % HOSTILE_STRINGS.length] + INVISIBLE + extra;
      const properties: Record<string, string> = { ...record.properties };
      if (key.startsWith('p:')) properties[key.slice(2)] += payload;
      return {
        ...record,
        properties,
        attribute: (name) => {
          const value = record.attribute(name);
          return value !== undefined && key === `a:${name}` ? `${value}${payload}` : value;
        },
        entries: record.entries?.bind(record),
        link: record.link?.bind(record),
      };
    }),
    tree.usage,
  );
}

function describeKey(key: string): string {
  return key.startsWith('p:') ? `property ${key.slice(2)}` : `attribute ${key.slice(2)}`;
}

function describe(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.slice(0, 300);
}
