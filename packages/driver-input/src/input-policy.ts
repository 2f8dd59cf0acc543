/**
 * Qubes' input policy, evaluated as qrexec evaluates it, for devgate's input devices.
 *
 * In Qubes a USB qube's input trigger calls `qubes.InputKeyboard`, `InputMouse` or `InputTablet` once
 * per event node, with the argument `+<port>+<bus-vendor-product-version>+<serial>`, from the USB qube
 * to dom0 (or the input target configured there); the first matching rule of the policy says allow, deny
 * or ask. devgate evaluates exactly those calls, but decides once per physical device: its event nodes'
 * calls are evaluated together, and one question names the device (qubes-issues 4787, 6532).
 *
 * Loading follows qrexec: policy.d files (`*.policy`, not starting with `.`, names of `[0-9a-z_.-]`)
 * in C-locale order, `!include`s relative to the including file, `!compat-4.0` reading the old
 * per-service files with the implicit deny Qubes adds after each argument-specific file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type DeviceInfo } from '@devgate/core';
import { type QubesInputService, QUBES_INPUT_SERVICES } from './input-class.js';
import {
  type PolicyAction,
  type PolicyDirective,
  type PolicyIssue,
  type PolicyRule,
  type PolicySyntax,
  isPolicyRule,
  parsePolicyText,
  serviceOfFileName,
} from './parse-input-policy.js';

export interface LoadedPolicy {
  readonly rules: readonly PolicyRule[];
  readonly issues: readonly PolicyIssue[];
  /** Every file read, in order. */
  readonly files: readonly string[];
}

export interface PolicyLocations {
  /** policy.d directories, read in this order as one (Qubes: /run/qubes/policy.d, /etc/qubes/policy.d). */
  readonly dirs?: readonly string[];
  /** Single files: a `.policy` file, or an old per-service file (`qubes.InputMouse`). */
  readonly files?: readonly string[];
  /** Where `!compat-4.0` finds the old per-service files. Default /etc/qubes-rpc/policy. */
  readonly compatDir?: string;
}

const POLICY_FILE_NAME = /^[0-9a-z_.-]+$/;
const MAX_INCLUDE_DEPTH = 16;
const MAX_FILE_BYTES = 4 * 1024 * 1024;

/** Which syntax a file is in: `.policy` files are policy.d; a file named after a service is an old one. */
export function syntaxOfFile(file: string): PolicySyntax {
  const name = path.basename(file);
  if (name.endsWith('.policy')) return { format: 'policy.d' };
  const named = serviceOfFileName(name);
  return named ? { format: 'qubes-rpc', ...named } : { format: 'policy.d' };
}

/** Reads policy as qrexec does, following includes; problems are issues, never exceptions. */
export function loadPolicy(locations: PolicyLocations): LoadedPolicy {
  const rules: PolicyRule[] = [];
  const issues: PolicyIssue[] = [];
  const files: string[] = [];
  const compatDir = locations.compatDir ?? '/etc/qubes-rpc/policy';

  const readText = (file: string, from?: { file: string; line: number }): string | undefined => {
    try {
      const stat = fs.statSync(file);
      if (!stat.isFile()) throw new Error('not a file');
      if (stat.size > MAX_FILE_BYTES) throw new Error(`larger than ${MAX_FILE_BYTES} bytes`);
      files.push(file);
      return fs.readFileSync(file, 'utf8');
    } catch (error) {
      issues.push({
        file: from?.file ?? file,
        line: from?.line ?? 0,
        column: 1,
        message: `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
      });
      return undefined;
    }
  };

  const loadFile = (file: string, syntax: PolicySyntax, depth: number, from?: { file: string; line: number }) => {
    if (depth > MAX_INCLUDE_DEPTH) {
      issues.push({ file: from?.file ?? file, line: from?.line ?? 0, column: 1, message: 'includes nested too deep' });
      return;
    }
    const text = readText(file, from);
    if (text === undefined) return;
    const parsed = parsePolicyText(text, file, syntax);
    issues.push(...parsed.issues);
    for (const entry of parsed.entries) {
      if (isPolicyRule(entry)) rules.push(entry);
      else follow(entry, depth);
    }
  };

  const loadDir = (dir: string, depth: number, from?: { file: string; line: number }) => {
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch (error) {
      issues.push({
        file: from?.file ?? dir,
        line: from?.line ?? 0,
        column: 1,
        message: `cannot read directory ${dir}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
      });
      return;
    }
    for (const name of policyFileNames(dir, names, issues))
      loadFile(path.join(dir, name), { format: 'policy.d' }, depth);
  };

  const follow = (directive: PolicyDirective, depth: number) => {
    const from = { file: directive.file, line: directive.line };
    const resolve = (p: string) => path.resolve(path.dirname(directive.file), p);
    switch (directive.kind) {
      case 'include':
        return loadFile(resolve(directive.path), { format: 'policy.d' }, depth + 1, from);
      case 'include-dir':
        return loadDir(resolve(directive.path), depth + 1, from);
      case 'include-service':
        return loadFile(
          resolve(directive.path),
          { format: 'qubes-rpc', service: directive.service, argument: directive.argument },
          depth + 1,
          from,
        );
      case 'compat-4.0':
        return loadCompat(depth + 1, from);
    }
  };

  /** The R4.0 files, each for the service (and argument) its name gives; Qubes denies the rest of an argument's calls. */
  const loadCompat = (depth: number, from: { file: string; line: number }) => {
    let names: string[];
    try {
      names = fs.readdirSync(compatDir).sort();
    } catch {
      return; // no old policy at all: nothing to add
    }
    for (const name of names) {
      const named = serviceOfFileName(name);
      if (!named || name.startsWith('.')) continue;
      const file = path.join(compatDir, name);
      if (!fs.statSync(file, { throwIfNoEntry: false })?.isFile()) continue;
      loadFile(file, { format: 'qubes-rpc', ...named }, depth, from);
      if (named.argument !== undefined) {
        rules.push({
          service: named.service,
          argument: named.argument,
          source: '@anyvm',
          target: '@anyvm',
          action: 'deny',
          params: {},
          file,
          line: 0,
        });
      }
    }
  };

  for (const dir of locations.dirs ?? []) loadDir(dir, 0);
  for (const file of locations.files ?? []) loadFile(path.resolve(file), syntaxOfFile(file), 0);
  return { rules, issues, files };
}

/** Policy files of a directory in qrexec's order; an invalid name makes Qubes refuse all policy. */
function policyFileNames(dir: string, names: readonly string[], issues: PolicyIssue[]): string[] {
  const chosen = names.filter((name) => {
    if (!name.endsWith('.policy') || name.startsWith('.')) return false;
    return fs.statSync(path.join(dir, name), { throwIfNoEntry: false })?.isFile() ?? false;
  });
  for (const name of chosen) {
    if (!POLICY_FILE_NAME.test(name)) {
      issues.push({ file: path.join(dir, name), line: 0, column: 1, message: `invalid filename: ${name}` });
    }
  }
  // "C" locale: byte order, which for these names is code unit order.
  return chosen.filter((name) => POLICY_FILE_NAME.test(name)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Where devgate reads input policy by default (Qubes reads /etc/qubes/policy.d). */
export const DEFAULT_INPUT_POLICY_DIR = '/etc/devgate/policy.d';

/**
 * The policy in force: what the policy.d directories (and files) say, or, where none of them exists,
 * Qubes' installer defaults for every backend that is not dom0 (mouse ask, keyboard deny, tablet deny).
 */
export function effectiveInputPolicy(
  locations: PolicyLocations,
  backends: readonly string[],
  /** Each backend's input target (Qubes' input-proxy-target): a name, or one per backend. */
  target: string | ((backend: string) => string) = 'dom0',
): LoadedPolicy & { readonly defaults: boolean } {
  const targetOf = typeof target === 'string' ? () => target : target;
  const present = [...(locations.dirs ?? []), ...(locations.files ?? [])].filter((p) => fs.existsSync(p));
  if (present.length > 0) return { ...loadPolicy(locations), defaults: false };
  const rules = backends
    .filter((b) => b !== 'dom0')
    .flatMap(
      (b) =>
        parsePolicyText(installerDefaultPolicy(b, { target: targetOf(b) }), `(installer defaults for ${b})`).entries,
    )
    .filter(isPolicyRule);
  return { rules, issues: [], files: [], defaults: true };
}

/** A qrexec call to evaluate. `source` and `target` are domain names; `dom0` is the admin VM. */
export interface PolicyRequest {
  readonly service: string;
  /** `+...`; `+` for none. */
  readonly argument: string;
  readonly source: string;
  /** The target the caller asked for; empty for none (`@default`). */
  readonly target: string;
  /** Every domain known, for `ask` (the targets offered) and `@anyvm`. */
  readonly domains?: readonly string[];
}

export interface PolicyDecision {
  readonly action: PolicyAction;
  readonly rule?: PolicyRule;
  /** allow: where the call goes. */
  readonly target?: string;
  /** ask: the targets offered, and the one preselected. */
  readonly candidates?: readonly string[];
  readonly defaultTarget?: string;
  /** Why, in qrexec's words where it has some. */
  readonly reason: string;
}

function token(name: string): string {
  if (name === 'dom0') return '@adminvm';
  return name === '' ? '@default' : name;
}

function domainOf(tokenText: string): string {
  return tokenText === '@adminvm' ? 'dom0' : tokenText;
}

/**
 * Whether a rule's source or target token matches a domain. devgate's domains have no tags or types,
 * so `@tag:` and `@type:` match none; `@anyvm` is every domain but dom0, `*` every domain.
 */
function matches(ruleToken: string, requested: string): boolean {
  if (ruleToken === '*') return true;
  if (ruleToken === '@anyvm') return requested !== '@adminvm';
  if (ruleToken.startsWith('@tag:') || ruleToken.startsWith('@type:') || ruleToken.startsWith('@dispvm:@tag:')) {
    return false;
  }
  return ruleToken === requested;
}

function matchesButTarget(rule: PolicyRule, request: PolicyRequest): boolean {
  return (
    (rule.service === undefined || rule.service === request.service) &&
    (rule.argument === undefined || rule.argument === request.argument) &&
    matches(rule.source, token(request.source))
  );
}

/** The first matching rule decides (qrexec's find_matching_rule); no rule denies. */
export function evaluatePolicy(rules: readonly PolicyRule[], request: PolicyRequest): PolicyDecision {
  const target = token(request.target);
  const rule = rules.find((r) => matchesButTarget(r, request) && matches(r.target, target));
  const at = (r: PolicyRule) => `${r.file}:${r.line}`;
  if (!rule) return { action: 'deny', reason: 'no matching rule found' };
  if (rule.action === 'deny') return { action: 'deny', rule, reason: `denied by policy ${at(rule)}` };
  if (rule.action === 'allow') {
    const actual = rule.params.target ?? target;
    if (actual === '@default') {
      return {
        action: 'deny',
        rule,
        reason: `policy define 'allow' action at ${at(rule)} but no target is specified by caller or policy`,
      };
    }
    return { action: 'allow', rule, target: domainOf(actual), reason: `allowed by policy ${at(rule)}` };
  }
  const candidates = rule.params.target ? [domainOf(rule.params.target)] : targetsForAsk(rules, request);
  if (candidates.length === 0) {
    return {
      action: 'deny',
      rule,
      reason: `policy define 'ask' action at ${at(rule)} but no target is available to choose from`,
    };
  }
  const preselected = rule.params.defaultTarget ? domainOf(rule.params.defaultTarget) : undefined;
  return {
    action: 'ask',
    rule,
    candidates,
    defaultTarget: preselected !== undefined && candidates.includes(preselected) ? preselected : undefined,
    reason: `ask by policy ${at(rule)}`,
  };
}

/** qrexec's collect_targets_for_ask: every target some rule would allow or ask for, minus the denied. */
function targetsForAsk(rules: readonly PolicyRule[], request: PolicyRequest): string[] {
  const domains = request.domains ?? [];
  const expand = (t: string): string[] => {
    if (t === '@adminvm') return ['dom0'];
    if (t === '*') return [...domains];
    if (t === '@anyvm') return domains.filter((d) => d !== 'dom0');
    if (t.startsWith('@')) return [];
    return domains.includes(t) ? [t] : [];
  };
  const targets = new Set<string>();
  for (const rule of [...rules].reverse()) {
    if (!matchesButTarget(rule, request)) continue;
    const expansion = expand(rule.action === 'deny' ? rule.target : (rule.params.target ?? rule.target));
    for (const t of expansion) {
      if (rule.action === 'deny') targets.delete(t);
      else targets.add(t);
    }
  }
  targets.delete(request.source);
  return [...targets].sort();
}

/**
 * What Qubes' installer (and its `qvm.sys-usb` salt state) writes to
 * `/etc/qubes/policy.d/50-config-input.policy` for a USB qube: mouse `ask`, keyboard `deny`, tablet
 * `deny`. `ask` is written `ask default_target=<target>`; anything but ask or allow is deny. devgate's
 * input target (Qubes': dom0) may be a frontend VM instead.
 */
export function installerDefaultPolicy(
  usbVm: string,
  options: { target?: string; mouse?: PolicyAction; keyboard?: PolicyAction } = {},
): string {
  const target = options.target ?? 'dom0';
  const action = (a: PolicyAction | undefined, fallback: PolicyAction) => {
    const chosen = a ?? fallback;
    return chosen === 'ask' ? `ask default_target=${target}` : chosen === 'allow' ? 'allow' : 'deny';
  };
  return [
    `qubes.InputMouse * ${usbVm} ${target} ${action(options.mouse, 'ask')}`,
    `qubes.InputKeyboard * ${usbVm} ${target} ${action(options.keyboard, 'deny')}`,
    '# not configurable by this state',
    `qubes.InputTablet * ${usbVm} ${target} deny`,
    '',
  ].join('\n');
}

/** One qrexec call an input device makes: a service and its argument, for some of its event nodes. */
export interface InputCall {
  readonly service: QubesInputService;
  readonly argument: string;
  readonly events: readonly string[];
}

/** The calls Qubes' input trigger would make for a device's event nodes (`data['qubes-calls']`). */
export function inputCalls(device: Pick<DeviceInfo, 'data'>): InputCall[] {
  // One entry per event node, in the order of `event-nodes`; empty for a node that makes no call.
  const calls = String(device.data['qubes-calls'] ?? '').split(',');
  const events = String(device.data['event-nodes'] ?? '').split(',');
  const byCall = new Map<string, InputCall>();
  calls.forEach((call, i) => {
    if (call === '') return;
    const plus = call.indexOf('+');
    const service = (plus < 0 ? call : call.slice(0, plus)) as QubesInputService;
    if (!QUBES_INPUT_SERVICES.includes(service)) return;
    const argument = plus < 0 ? '+' : call.slice(plus);
    const key = `${service}${argument}`;
    const known = byCall.get(key);
    const event = events[i];
    byCall.set(key, { service, argument, events: [...(known?.events ?? []), ...(event ? [event] : [])] });
  });
  return [...byCall.values()];
}

/** The decision about one physical device: one verdict, from its calls' verdicts. */
export interface InputDeviceDecision {
  /** deny: nothing goes; ask: one question for the calls that ask; allow: the allowed calls go. */
  readonly verdict: PolicyAction;
  readonly calls: readonly (InputCall & { readonly decision: PolicyDecision })[];
  /**
   * Event nodes whose events may go (allow), or that could go after a yes (ask: those of every
   * candidate; a yes sends only the ones that may go to the answered VM, `eventsGoingTo`).
   */
  readonly events: readonly string[];
  /** Candidates of the question, and the one preselected. */
  readonly candidates: readonly string[];
  readonly defaultTarget?: string;
  /** Where allowed events go. */
  readonly target?: string;
  readonly reason: string;
}

/**
 * Evaluates a device's calls from `source` to `target`, and makes one decision of them: any `ask`
 * makes the device one question (for its asking calls; the denied calls stay denied whatever the
 * answer); else the allowed calls go; a device whose every call is denied (or that makes none) is denied.
 */
export function decideInputDevice(
  rules: readonly PolicyRule[],
  device: Pick<DeviceInfo, 'data'>,
  request: { source: string; target: string; domains?: readonly string[] },
): InputDeviceDecision {
  const calls = inputCalls(device).map((call) => ({
    ...call,
    decision: evaluatePolicy(rules, { ...request, service: call.service, argument: call.argument }),
  }));
  const asking = calls.filter((c) => c.decision.action === 'ask');
  const allowed = calls.filter((c) => c.decision.action === 'allow');
  const denied = calls.filter((c) => c.decision.action === 'deny');
  const describe = (list: typeof calls) =>
    list.map((c) => `${c.service} (${c.events.join(',') || '-'}): ${c.decision.reason}`).join('; ');
  if (device.data['built-in'] === true) {
    return {
      verdict: 'deny',
      calls,
      events: [],
      candidates: [],
      reason: "built into the machine (i8042, ACPI or platform): Qubes' input proxy never forwards it",
    };
  }
  if (calls.length === 0) {
    return { verdict: 'deny', calls, events: [], candidates: [], reason: 'it makes no input call Qubes forwards' };
  }
  if (asking.length > 0) {
    const candidates = [...new Set(asking.flatMap((c) => c.decision.candidates ?? []))].sort();
    const defaults = [...new Set(asking.map((c) => c.decision.defaultTarget).filter((t) => t !== undefined))];
    return {
      verdict: 'ask',
      calls,
      events: [...asking, ...allowed].flatMap((c) => c.events),
      candidates,
      defaultTarget: defaults.length === 1 ? defaults[0] : undefined,
      target: allowed[0]?.decision.target,
      reason: describe([...asking, ...allowed, ...denied]),
    };
  }
  if (allowed.length > 0) {
    // A device goes to one target: calls that the policy allows only elsewhere stay home.
    const target = allowed[0].decision.target!;
    return {
      verdict: 'allow',
      calls,
      events: eventsGoingTo({ calls }, target),
      candidates: [],
      target,
      reason: describe([...allowed, ...denied]),
    };
  }
  return { verdict: 'deny', calls, events: [], candidates: [], reason: describe(denied) };
}

/**
 * The event nodes whose calls may go to `frontend`: those asking for it (once a person said yes) and
 * those the policy allows there. A call allowed to another target never follows the answer.
 */
export function eventsGoingTo(decision: Pick<InputDeviceDecision, 'calls'>, frontend: string): string[] {
  const asking = decision.calls.filter((c) => c.decision.action === 'ask' && c.decision.candidates?.includes(frontend));
  const allowed = decision.calls.filter((c) => c.decision.action === 'allow' && c.decision.target === frontend);
  return [...asking, ...allowed].flatMap((c) => c.events);
}
