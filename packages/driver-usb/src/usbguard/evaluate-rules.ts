/**
 * Deciding a device against a USBGuard rule list: rules are tried in order and the first one whose
 * attributes match the device and whose conditions hold decides; when none does, the implicit
 * target (USBGuard's ImplicitPolicyTarget, `block` by default) applies. Rules whose target is
 * `match` or `device` never decide (USBGuard documents `match` as "won't affect the final
 * decision"; `device` only describes a device).
 *
 * An attribute compares the rule's values (the source set) with the device's (the target set):
 *
 *   equals          same number of values, and every rule value matches some device value
 *   equals-ordered  same number of values, the i-th rule value matching the i-th device value
 *   all-of          every rule value matches some device value
 *   one-of          at least one rule value matches some device value
 *   none-of         no rule value matches any device value
 *   match-all       every device value is matched by some rule value (and a device with no
 *                   values passes: "only HID interfaces" holds for a device with none)
 *
 * A value matches when it is equal, or for ids and interface types when the rule's wildcards cover
 * the device's value. Unlike USBGuard 1.1.2, hex digits in ids compare without regard to case, and
 * match-all honours id wildcards (USBGuard tests them the wrong way round there).
 *
 * Conditions are combined with the `if` attribute's operator, as USBGuard does: one-of (any holds),
 * none-of (none holds), and all-of, equals, equals-ordered and match-all (all hold).
 */
import type {
  UsbGuardAttribute,
  UsbGuardCondition,
  UsbGuardDeviceId,
  UsbGuardInterfaceType,
  UsbGuardRule,
  UsbGuardSetOperator,
} from './parse-usbguard-rules.js';

/** A device as the rules see it, in USBGuard's terms. */
export interface UsbGuardDevice {
  /** `vvvv:pppp`, 4 hex digits each. */
  readonly id: string;
  readonly hash?: string;
  readonly parentHash?: string;
  readonly name?: string;
  readonly serial?: string;
  readonly viaPort: readonly string[];
  /** One `cc:ss:pp` (2 hex digits each) per interface, in descriptor order. */
  readonly withInterface: readonly string[];
  /** The port's sysfs `connect_type`: `hotplug`, `hardwired`, `not used`, ... */
  readonly withConnectType?: string;
}

export type PolicyTarget = 'allow' | 'block' | 'reject';

/** What a rule's rule-applied / rule-evaluated conditions know about its past. */
export interface RuleHistory {
  lastApplied?(rule: UsbGuardRule): Date | undefined;
  lastEvaluated?(rule: UsbGuardRule): Date | undefined;
}

export interface EvaluationContext {
  readonly now: Date;
  /** The devices allowed right now, which allowed-matches(...) queries. None if absent. */
  readonly allowedDevices?: readonly UsbGuardDevice[];
  /** random(p) holds when this returns less than p; a number in [0, 1). Default Math.random. */
  readonly random?: () => number;
  readonly history?: RuleHistory;
  /**
   * The clock localtime(...) reads: the process's local time (default), or UTC, which is what
   * USBGuard 1.1.2 really compares against despite the name.
   */
  readonly clock?: 'local' | 'utc';
}

export interface RuleDecision {
  readonly target: PolicyTarget;
  /** The rule that decided, for the audit log; absent when the implicit target applied. */
  readonly rule?: UsbGuardRule;
  /** Its index in the list given to evaluate. */
  readonly ruleIndex?: number;
  readonly implicit: boolean;
}

export function evaluate(
  rules: readonly UsbGuardRule[],
  device: UsbGuardDevice,
  context: EvaluationContext,
  implicitTarget: PolicyTarget = 'block',
): RuleDecision {
  for (const [ruleIndex, rule] of rules.entries()) {
    if (rule.target !== 'allow' && rule.target !== 'block' && rule.target !== 'reject') continue;
    if (matchesDevice(rule, device) && meetsConditions(rule, context)) {
      return { target: rule.target, rule, ruleIndex, implicit: false };
    }
  }
  return { target: implicitTarget, implicit: true };
}

/** Whether the rule's attributes match the device; conditions and the target are not looked at. */
export function matchesDevice(rule: UsbGuardRule, device: UsbGuardDevice): boolean {
  const deviceId = splitId(device.id);
  const interfaces = device.withInterface.map(parseInterface);
  return (
    applies(rule.id, deviceId ? [deviceId] : [], idCovers) &&
    applies(rule.serial, [device.serial ?? ''], same) &&
    applies(rule.name, [device.name ?? ''], same) &&
    applies(rule.hash, [device.hash ?? ''], same) &&
    applies(rule.parentHash, [device.parentHash ?? ''], same) &&
    applies(rule.viaPort, device.viaPort, same) &&
    applies(rule.withInterface, interfaces, interfaceCovers) &&
    applies(rule.withConnectType, [device.withConnectType ?? ''], same)
  );
}

/** Whether the rule's conditions hold (true when it has none). */
export function meetsConditions(rule: UsbGuardRule, context: EvaluationContext): boolean {
  const conditions = rule.conditions;
  if (!conditions || conditions.values.length === 0) return true;
  const results = conditions.values.map((c) => holds(c, rule, context));
  switch (conditions.operator) {
    case 'one-of':
      return results.some(Boolean);
    case 'none-of':
      return !results.some(Boolean);
    default:
      return results.every(Boolean);
  }
}

function holds(condition: UsbGuardCondition, rule: UsbGuardRule, context: EvaluationContext): boolean {
  return condition.negated !== holdsPlain(condition, rule, context);
}

function holdsPlain(condition: UsbGuardCondition, rule: UsbGuardRule, context: EvaluationContext): boolean {
  switch (condition.kind) {
    case 'true':
      return true;
    case 'false':
      return false;
    case 'localtime': {
      const t = secondsOfDay(context.now, context.clock ?? 'local');
      return t >= condition.from && t <= condition.to;
    }
    case 'allowed-matches':
      return (context.allowedDevices ?? []).some((d) => matchesDevice(condition.query, d));
    case 'random':
      return (context.random ?? Math.random)() < condition.probability;
    case 'rule-applied':
    case 'rule-evaluated': {
      const last =
        condition.kind === 'rule-applied'
          ? context.history?.lastApplied?.(rule)
          : context.history?.lastEvaluated?.(rule);
      if (!last) return false;
      // As in USBGuard, no duration (or 0) means "ever".
      if (!condition.withinSeconds) return true;
      return context.now.getTime() - last.getTime() <= condition.withinSeconds * 1000;
    }
  }
}

function secondsOfDay(now: Date, clock: 'local' | 'utc'): number {
  return clock === 'utc'
    ? now.getUTCHours() * 3600 + now.getUTCMinutes() * 60 + now.getUTCSeconds()
    : now.getHours() * 3600 + now.getMinutes() * 60 + now.getSeconds();
}

// ---------------------------------------------------------------------------------------------
// Set operators

function applies<R, D>(
  attribute: UsbGuardAttribute<R> | undefined,
  deviceValues: readonly D[],
  covers: (ruleValue: R, deviceValue: D) => boolean,
): boolean {
  if (!attribute || attribute.values.length === 0) return true;
  return solve(attribute.operator, attribute.values, deviceValues, covers);
}

export function solve<R, D>(
  operator: UsbGuardSetOperator,
  ruleValues: readonly R[],
  deviceValues: readonly D[],
  covers: (ruleValue: R, deviceValue: D) => boolean,
): boolean {
  const matchesSome = (r: R) => deviceValues.some((d) => covers(r, d));
  switch (operator) {
    case 'all-of':
      return ruleValues.every(matchesSome);
    case 'one-of':
      return ruleValues.some(matchesSome);
    case 'none-of':
      return !ruleValues.some(matchesSome);
    case 'equals':
      return ruleValues.length === deviceValues.length && ruleValues.every(matchesSome);
    case 'equals-ordered':
      return ruleValues.length === deviceValues.length && ruleValues.every((r, i) => covers(r, deviceValues[i]));
    case 'match-all':
      return deviceValues.every((d) => ruleValues.some((r) => covers(r, d)));
  }
}

const same = (a: string, b: string) => a === b;

interface DeviceInterface {
  readonly bClass: number;
  readonly bSubClass: number;
  readonly bProtocol: number;
}

function splitId(id: string): UsbGuardDeviceId | undefined {
  const m = /^([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})$/.exec(id);
  return m ? { vendor: m[1], product: m[2] } : undefined;
}

function idCovers(rule: UsbGuardDeviceId, device: UsbGuardDeviceId): boolean {
  if (rule.vendor === '*') return true;
  if (rule.vendor.toLowerCase() !== device.vendor.toLowerCase()) return false;
  return rule.product === '*' || rule.product.toLowerCase() === device.product.toLowerCase();
}

/** A malformed device interface is kept as NaNs, which no rule value matches. */
function parseInterface(text: string): DeviceInterface {
  const m = /^([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})$/.exec(text);
  if (!m) return { bClass: NaN, bSubClass: NaN, bProtocol: NaN };
  return { bClass: parseInt(m[1], 16), bSubClass: parseInt(m[2], 16), bProtocol: parseInt(m[3], 16) };
}

function interfaceCovers(rule: UsbGuardInterfaceType, device: DeviceInterface): boolean {
  return (
    rule.bClass === device.bClass &&
    (rule.bSubClass === '*' || rule.bSubClass === device.bSubClass) &&
    (rule.bProtocol === '*' || rule.bProtocol === device.bProtocol)
  );
}
