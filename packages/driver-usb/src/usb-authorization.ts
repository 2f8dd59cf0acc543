/**
 * Host USB authorization, USBGuard-compatible: decide every USB device of a host against a rule
 * list and enforce the decision through the kernel's sysfs attributes, as usbguard-daemon does:
 *
 *   allow   -> `authorized` = 1          block -> `authorized` = 0
 *   reject  -> `remove` = 1 (the device is gone until it is plugged in again)
 *
 * Root hubs (`usbN`) are controllers: their own state is kept (USBGuard's default
 * PresentControllerPolicy=keep), and when the implicit target is not `allow` their
 * `authorized_default` is set to 0, so a device plugged in later starts blocked until the policy has
 * allowed it (USBGuard's AuthorizedDefault=none).
 *
 * An extension USBGuard lacks (its issue #67): per-interface rules. For an allowed device, each
 * interface of the active configuration is matched against `interfaceRules` (first match wins; no
 * match leaves it alone) and its `interface_authorized` written, e.g. to take the keyboard interface
 * of a "storage" stick away while the storage stays.
 *
 * Every decision is a record for the audit log, returned and emitted. Devices whose descriptors are
 * invalid, or that a rule could only be decided for with a hash that is unknown, are blocked: the
 * policy fails closed. The strings in a record are inert: rules are printed with formatRule, which
 * escapes every byte that is not printable ASCII.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Subject, type Observable, type Subscription } from 'rxjs';
import { type DevgateError, type DeviceSource, type Disposable, Errors, type HostTree } from '@devgate/core';
import {
  type EvaluationContext,
  type PolicyTarget,
  type RuleHistory,
  type UsbGuardDevice,
  matchesDevice,
  meetsConditions,
} from './usbguard/evaluate-rules.js';
import { formatInterfaceType, formatRule } from './usbguard/format-usbguard-rules.js';
import { type UsbGuardRule } from './usbguard/parse-usbguard-rules.js';
import { deviceRule } from './generate-policy.js';
import {
  type UsbAttributeBytes,
  type UsbGuardDeviceEntry,
  sysfsAttributeBytes,
  usbGuardDevices,
} from './usbguard-devices.js';

/** A per-interface rule: `cc:ss:pp`, `cc:ss:*` or `cc:*:*`. */
export interface InterfaceRule {
  readonly target: 'allow' | 'block';
  readonly interface: string;
}

export interface UsbPolicy {
  readonly rules: readonly UsbGuardRule[];
  /** USBGuard's ImplicitPolicyTarget: what applies when no rule matches. Default `block`. */
  readonly implicitTarget?: PolicyTarget;
  readonly interfaceRules?: readonly InterfaceRule[];
  /**
   * What to do with devices already present when the policy starts (USBGuard's
   * PresentDevicePolicy): apply it (default), or keep them as they are and decide new devices only.
   */
  readonly presentDevicePolicy?: 'apply-policy' | 'keep';
  /** localtime(...) reads local time (default) or UTC, as USBGuard 1.1.2 really does. */
  readonly clock?: 'local' | 'utc';
}

export type DecisionTarget = PolicyTarget | 'keep';

/** One decision, for the audit log. */
export interface AuthorizationDecision {
  /** What was decided about: a device, one of its interfaces, or a controller's default. */
  readonly kind: 'device' | 'interface' | 'controller';
  /** The busid (`1-1.4`), `usbN` for a controller, or the interface (`1-1.4:1.0`). */
  readonly device: string;
  readonly devpath: string;
  readonly target: DecisionTarget;
  /** The deciding rule as USBGuard prints it; absent when the implicit target or a default applied. */
  readonly rule?: string;
  /** Where the rule came from (`rules.conf:3`), when known. */
  readonly ruleSource?: string;
  readonly reason: string;
  /** The sysfs attribute written (`authorized`, `remove`, `authorized_default`, `interface_authorized`). */
  readonly attribute?: string;
  readonly value?: string;
  /** Whether the value is now in sysfs. False when it was kept, or when the write failed. */
  readonly applied: boolean;
  /** Set when the decision failed closed, or the write failed. */
  readonly error?: { readonly code: string; readonly message: string };
  /** The device as a USBGuard rule (`device id ... via-port ...`): inert text. */
  readonly description?: string;
  readonly at: Date;
}

export interface ApplyOptions {
  /** Called with each decision as it is made. */
  readonly onDecision?: (decision: AuthorizationDecision) => void;
  /** Raw attribute bytes; default: read from the same sysfs root. */
  readonly bytes?: UsbAttributeBytes;
  /** Only these devpaths (a hotplug), controllers included; default every device. */
  readonly only?: ReadonlySet<string>;
  /** Decide, but do not write (a dry run). */
  readonly dryRun?: boolean;
  readonly now?: () => Date;
  /** For rule-applied / rule-evaluated: kept across calls by UsbAuthorizer. */
  readonly history?: PolicyHistory;
  /** Set `authorized_default` on controllers (default true). */
  readonly controllers?: boolean;
}

/** What rule-applied(...) and rule-evaluated(...) conditions read, kept as decisions are made. */
export class PolicyHistory implements RuleHistory {
  private readonly applied = new Map<UsbGuardRule, Date>();
  private readonly evaluated = new Map<UsbGuardRule, Date>();
  lastApplied(rule: UsbGuardRule): Date | undefined {
    return this.applied.get(rule);
  }
  lastEvaluated(rule: UsbGuardRule): Date | undefined {
    return this.evaluated.get(rule);
  }
  noteApplied(rule: UsbGuardRule, at: Date): void {
    this.applied.set(rule, at);
  }
  noteEvaluated(rule: UsbGuardRule, at: Date): void {
    this.evaluated.set(rule, at);
  }
}

export interface DeviceVerdict {
  readonly target: PolicyTarget;
  readonly rule?: UsbGuardRule;
  readonly ruleIndex?: number;
  readonly reason: string;
  readonly error?: DevgateError;
}

/**
 * Decides one device: the first rule whose attributes and conditions match decides, else the
 * implicit target. A rule that would match but for a hash or parent hash the device lacks cannot be
 * decided either way, so the device is blocked (fail closed) with DG_USB_HASH_UNAVAILABLE; so are
 * devices with invalid descriptors (DG_USB_DESCRIPTORS_INVALID; USBGuard rejects those).
 */
export function decideDevice(
  entry: UsbGuardDeviceEntry,
  policy: UsbPolicy,
  context: EvaluationContext,
  history?: PolicyHistory,
): DeviceVerdict {
  if (entry.invalidDescriptors !== undefined) {
    const error = Errors.usbDescriptorsInvalid({ device: entry.port, reason: entry.invalidDescriptors });
    return { target: 'block', reason: error.message, error };
  }
  const { device } = entry;
  for (const [ruleIndex, rule] of policy.rules.entries()) {
    if (rule.target !== 'allow' && rule.target !== 'block' && rule.target !== 'reject') continue;
    const missing = missingHash(rule, device);
    // Match on everything the device does have; only the unknown hash attributes are left out.
    const probe = missing
      ? {
          ...rule,
          ...(device.hash === undefined ? { hash: undefined } : {}),
          ...(device.parentHash === undefined ? { parentHash: undefined } : {}),
        }
      : rule;
    if (!matchesDevice(probe, device)) continue;
    history?.noteEvaluated(rule, context.now);
    if (!meetsConditions(rule, context)) continue;
    const where = ruleLabel(rule, ruleIndex);
    if (missing) {
      const error = Errors.usbHashUnavailable({
        device: entry.port,
        attribute: missing,
        rule: where,
        reason: (missing === 'hash' ? entry.hashUnavailable : entry.parentHashUnavailable) ?? 'unknown',
      });
      return { target: 'block', rule, ruleIndex, reason: error.message, error };
    }
    history?.noteApplied(rule, context.now);
    return { target: rule.target, rule, ruleIndex, reason: `matched ${where}` };
  }
  const implicit = policy.implicitTarget ?? 'block';
  return { target: implicit, reason: `no rule matched: implicit target ${implicit}` };
}

function missingHash(rule: UsbGuardRule, device: UsbGuardDevice): 'hash' | 'parent-hash' | undefined {
  if (rule.hash && rule.hash.values.length > 0 && device.hash === undefined) return 'hash';
  if (rule.parentHash && rule.parentHash.values.length > 0 && device.parentHash === undefined) return 'parent-hash';
  return undefined;
}

function ruleLabel(rule: UsbGuardRule, index: number): string {
  return rule.source ? `rule ${rule.source.file}:${rule.source.line}` : `rule ${index + 1}`;
}

/** The device as USBGuard's list-devices prints it, minus the number: an inert one-line description. */
export function describeUsbGuardDevice(entry: UsbGuardDeviceEntry): string {
  return formatRule({ ...deviceRule(entry), target: 'device' });
}

/**
 * Decides every USB device of `tree` (read from the host whose sysfs is at `sysRoot`) and writes the
 * decisions there. Returns the decisions in the order they were made: controllers, then devices
 * parents first, each followed by its interfaces.
 */
export function applyUsbPolicy(
  sysRoot: string,
  tree: HostTree,
  policy: UsbPolicy,
  options: ApplyOptions = {},
): AuthorizationDecision[] {
  const decisions: AuthorizationDecision[] = [];
  const now = options.now ?? (() => new Date());
  const emit = (decision: Omit<AuthorizationDecision, 'at'>) => {
    const full = { ...decision, at: now() };
    decisions.push(full);
    options.onDecision?.(full);
  };
  const entries = usbGuardDevices(tree, { bytes: options.bytes ?? sysfsAttributeBytes(sysRoot) });
  const implicit = policy.implicitTarget ?? 'block';

  if (options.controllers !== false && implicit !== 'allow') {
    for (const entry of entries.filter((e) => e.isRootHub)) {
      if (options.only && !options.only.has(entry.devpath)) continue;
      const write = options.dryRun ? undefined : writeAttribute(sysRoot, entry.devpath, 'authorized_default', '0');
      emit({
        kind: 'controller',
        device: entry.port,
        devpath: entry.devpath,
        target: 'block',
        reason: `implicit target is ${implicit}: devices plugged in later start blocked`,
        attribute: 'authorized_default',
        value: '0',
        applied: !options.dryRun && write === undefined,
        ...(write ? { error: { code: write.code, message: write.message } } : {}),
      });
    }
  }

  // allowed-matches(...) sees what is allowed now, updated as the policy goes.
  const allowed = new Map(entries.filter((e) => e.authorized === true).map((e) => [e.devpath, e.device]));
  for (const entry of entries) {
    if (entry.isRootHub) continue;
    if (options.only && !options.only.has(entry.devpath)) continue;
    const context: EvaluationContext = {
      now: now(),
      allowedDevices: [...allowed.values()],
      clock: policy.clock,
      history: options.history,
    };
    const verdict = decideDevice(entry, policy, context, options.history);
    const [attribute, value] =
      verdict.target === 'reject' ? ['remove', '1'] : ['authorized', verdict.target === 'allow' ? '1' : '0'];
    const write = options.dryRun ? undefined : writeAttribute(sysRoot, entry.devpath, attribute, value);
    const error = verdict.error ?? write;
    emit({
      kind: 'device',
      device: entry.port,
      devpath: entry.devpath,
      target: verdict.target,
      ...(verdict.rule ? { rule: formatRule(verdict.rule) } : {}),
      ...(verdict.rule?.source ? { ruleSource: `${verdict.rule.source.file}:${verdict.rule.source.line}` } : {}),
      reason: verdict.reason,
      attribute,
      value,
      applied: !options.dryRun && write === undefined,
      ...(error ? { error: { code: error.code, message: error.message } } : {}),
      description: describeUsbGuardDevice(entry),
    });
    if (verdict.target === 'allow' && write === undefined) allowed.set(entry.devpath, entry.device);
    else allowed.delete(entry.devpath);
    if (verdict.target === 'allow' && policy.interfaceRules?.length) {
      for (const usbInterface of entry.interfaces) {
        const rule = policy.interfaceRules.find((r) => interfaceTypeMatches(r.interface, usbInterface.type));
        if (!rule) continue;
        const bit = rule.target === 'allow' ? '1' : '0';
        const failed = options.dryRun
          ? undefined
          : writeAttribute(sysRoot, usbInterface.devpath, 'interface_authorized', bit);
        emit({
          kind: 'interface',
          device: usbInterface.name,
          devpath: usbInterface.devpath,
          target: rule.target,
          rule: `${rule.target} with-interface ${rule.interface}`,
          reason: `interface ${usbInterface.type} matched the interface rule`,
          attribute: 'interface_authorized',
          value: bit,
          applied: !options.dryRun && failed === undefined,
          ...(failed ? { error: { code: failed.code, message: failed.message } } : {}),
        });
      }
    }
  }
  return decisions;
}

/** Writes the target's sysfs attribute for one device; throws DG_USB_AUTHORIZATION_FAILED. */
export function authorizeUsbDevice(sysRoot: string, devpath: string, target: PolicyTarget): void {
  const [attribute, value] = target === 'reject' ? ['remove', '1'] : ['authorized', target === 'allow' ? '1' : '0'];
  const error = writeAttribute(sysRoot, devpath, attribute, value);
  if (error) throw error;
}

/**
 * Writes one sysfs attribute the way `echo 1 > authorized` does, but never creates a file (sysfs
 * has every attribute it supports) and never follows a link. Returns the error instead of throwing.
 */
function writeAttribute(sysRoot: string, devpath: string, attribute: string, value: string): DevgateError | undefined {
  const device = devpath.slice(devpath.lastIndexOf('/') + 1);
  const parts = devpath.split('/').slice(1);
  if (!devpath.startsWith('/devices/') || parts.some((p) => p === '' || p === '.' || p === '..')) {
    return Errors.usbAuthorizationFailed({ device, attribute, reason: 'not a sysfs device path' });
  }
  const file = path.join(sysRoot, devpath, attribute);
  try {
    const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW);
    try {
      fs.writeSync(fd, value);
    } finally {
      fs.closeSync(fd);
    }
    return undefined;
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    return Errors.usbAuthorizationFailed({ device, attribute, reason });
  }
}

/** Whether an interface rule pattern (`03:*:*`) covers an interface type (`03:01:01`). */
export function interfaceTypeMatches(pattern: string, type: string): boolean {
  const p = pattern.toLowerCase().split(':');
  const t = type.toLowerCase().split(':');
  return p.length === 3 && t.length === 3 && p.every((part, i) => part === '*' || part === t[i]);
}

/** Parses `allow 08:06:50` / `block 03:*:*` lines (comments with #); throws DG_RULE_SYNTAX. */
export function parseInterfaceRules(text: string, file = '<interface rules>'): InterfaceRule[] {
  const rules: InterfaceRule[] = [];
  text.split('\n').forEach((raw, index) => {
    const line = raw.replace(/#.*$/, '').trim();
    if (line === '') return;
    const m = /^(allow|block)[ \t]+([0-9a-fA-F]{2}):([0-9a-fA-F]{2}|\*):([0-9a-fA-F]{2}|\*)$/.exec(line);
    if (!m || (m[3] === '*' && m[4] !== '*')) {
      throw Errors.ruleSyntax({ file, line: index + 1, column: 1, what: 'expected allow|block cc:ss:pp' });
    }
    const type = { bClass: parseInt(m[2], 16), bSubClass: m[3] === '*' ? ('*' as const) : parseInt(m[3], 16) };
    const bProtocol = m[4] === '*' ? ('*' as const) : parseInt(m[4], 16);
    rules.push({ target: m[1] as 'allow' | 'block', interface: formatInterfaceType({ ...type, bProtocol }) });
  });
  return rules;
}

export interface UsbAuthorizerOptions extends Omit<ApplyOptions, 'only' | 'onDecision' | 'history'> {
  /** The sysfs root to enforce in; default `/sys`. */
  readonly sysRoot?: string;
}

/**
 * Keeps a host authorized: applies the policy to the devices present when started (unless
 * `presentDevicePolicy` is `keep`) and then to every device that appears in the source's trees (a
 * device plugged in again is new: it has a new device number). Decisions are emitted on `decisions$`.
 */
export class UsbAuthorizer implements Disposable {
  private readonly subject = new Subject<AuthorizationDecision>();
  readonly decisions$: Observable<AuthorizationDecision> = this.subject.asObservable();
  private readonly history = new PolicyHistory();
  private subscription?: Subscription;
  private known?: Set<string>;
  readonly sysRoot: string;

  constructor(
    private readonly source: DeviceSource,
    private readonly policy: UsbPolicy,
    private readonly options: UsbAuthorizerOptions = {},
  ) {
    this.sysRoot = options.sysRoot ?? '/sys';
  }

  /** Subscribes to the source; a source that replays its tree is handled before this returns. */
  start(): this {
    this.subscription ??= this.source.trees$.subscribe({
      next: (tree) => this.onTree(tree),
      error: (error: unknown) => this.subject.error(error),
    });
    return this;
  }

  private onTree(tree: HostTree): void {
    const bytes = this.options.bytes ?? sysfsAttributeBytes(this.sysRoot);
    const entries = usbGuardDevices(tree, { bytes });
    const keys = new Map(entries.map((e) => [`${e.devpath}|${e.devnum ?? ''}`, e.devpath]));
    const first = this.known === undefined;
    let fresh = new Set([...keys].filter(([key]) => !this.known?.has(key)).map(([, devpath]) => devpath));
    this.known = new Set(keys.keys());
    // Kept devices are left alone, but their controllers still get the policy's default.
    if (first && this.policy.presentDevicePolicy === 'keep') {
      fresh = new Set(entries.filter((e) => e.isRootHub).map((e) => e.devpath));
    }
    if (fresh.size === 0) return;
    applyUsbPolicy(this.sysRoot, tree, this.policy, {
      ...this.options,
      bytes,
      only: fresh,
      history: this.history,
      onDecision: (decision) => this.subject.next(decision),
    });
  }

  dispose(): void {
    this.subscription?.unsubscribe();
    this.subscription = undefined;
    this.subject.complete();
  }
}
