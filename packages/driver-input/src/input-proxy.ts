/**
 * Qubes' input proxy, decided once per physical device: when an input device appears in a backend
 * that is not dom0 (a USB VM), Qubes' policy for its calls (qubes.InputKeyboard, InputMouse,
 * InputTablet) says whether its events may go to the input target (dom0, or a VM), must not, or need a
 * person's answer. One question names the device (name, vendor:product, port, backend, class,
 * interfaces, and a BadUSB warning), however many event nodes it has; an unanswered question denies at
 * its timeout; every decision is audited.
 *
 * Moving the events is `forward`'s (input-forwarding.ts: from the USB VM's agent to the frontend's
 * QEMU); this service decides and records, and stops a forward when its device goes or changes.
 */
import {
  type DeviceInfo,
  type DeviceManager,
  type Disposable,
  describeDevice,
  portKey,
  portLabel,
} from '@devgate/core';
import * as fs from 'node:fs';
import {
  DEFAULT_INPUT_POLICY_DIR,
  type InputDeviceDecision,
  decideInputDevice,
  effectiveInputPolicy,
  eventsGoingTo,
} from './input-policy.js';
import { type ForwardStop, type InputForward } from './input-forwarding.js';
import { INPUT_CLASS_ID } from './parse-input-devices.js';
import { type PolicyRule } from './parse-input-policy.js';

export interface InputProxyAnswer {
  readonly verdict: 'allow' | 'deny';
  readonly frontend?: string;
  /** Who answered: a user, `timeout`, `shutdown`. */
  readonly by: string;
}

export interface InputProxyAudit {
  readonly action: 'input-policy' | 'answer';
  readonly device: DeviceInfo;
  readonly frontend: string;
  readonly outcome: 'ok' | 'denied';
  readonly reason: string;
  readonly by: string;
}

export interface InputProxyOptions {
  /** The rules in force, read on each decision (so an edit applies to the next device). */
  readonly rules: () => readonly PolicyRule[];
  /** Where a backend's input goes, as Qubes' /etc/qubes/input-proxy-target says. Default dom0. */
  readonly target?: (backend: string) => string;
  /** Asks a person; resolves with the answer (a timeout denies). */
  readonly ask: (
    device: DeviceInfo,
    candidates: readonly string[],
    reason: string,
    description: string,
  ) => Promise<InputProxyAnswer>;
  /** A remembered answer for this device and frontend, if any. */
  readonly remembered?: (device: DeviceInfo, frontend: string) => 'allow' | 'deny' | undefined;
  readonly audit: (entry: InputProxyAudit) => void;
  /** Starts moving an allowed device's events; stopped, saying why, when the device goes or changes. */
  readonly forward?: (device: DeviceInfo, frontend: string, events: readonly string[]) => InputForward | void;
}

/** A decision made, per device present. */
export interface InputProxyState {
  readonly device: DeviceInfo;
  readonly verdict: 'allow' | 'deny' | 'pending';
  readonly frontend?: string;
  readonly events: readonly string[];
}

export class InputProxy implements Disposable {
  private readonly states = new Map<string, InputProxyState>();
  private readonly forwards = new Map<string, InputForward>();
  private readonly handlers: (() => void)[] = [];

  constructor(
    private readonly manager: DeviceManager,
    private readonly options: InputProxyOptions,
  ) {}

  start(): void {
    const added = (event: { device: DeviceInfo }) => void this.consider(event.device);
    const removed = (event: { device: DeviceInfo }) => {
      if (event.device.port.devclass !== INPUT_CLASS_ID) return;
      this.states.delete(portKey(event.device.port));
      this.stopForward(portKey(event.device.port), 'device-went');
    };
    this.manager.on('added', added);
    this.manager.on('changed', added);
    this.manager.on('removed', removed);
    this.handlers.push(
      () => this.manager.off('added', added),
      () => this.manager.off('changed', added),
      () => this.manager.off('removed', removed),
    );
    for (const device of this.manager.list({ devclass: INPUT_CLASS_ID })) void this.consider(device);
  }

  /** What was decided for each device present. */
  list(): InputProxyState[] {
    return [...this.states.values()];
  }

  /**
   * Decides one device, once per insertion, and again when its event nodes change (a device is
   * often listed a moment before its kernel made its event nodes: it makes no call yet).
   */
  async consider(device: DeviceInfo): Promise<void> {
    if (device.port.devclass !== INPUT_CLASS_ID || device.port.backend === 'dom0') return;
    const key = portKey(device.port);
    const before = this.states.get(key)?.device;
    if (before?.deviceId === device.deviceId && SAME_NODES.every((k) => before.data[k] === device.data[k])) return;
    // Another device in the port, or other nodes: what was allowed before goes nowhere now.
    this.stopForward(key, 'decided-again');
    const target = this.options.target?.(device.port.backend) ?? 'dom0';
    const decision = decideInputDevice(this.options.rules(), device, {
      source: device.port.backend,
      target,
      domains: [...new Set([...this.manager.domains(), 'dom0', target])],
    });
    const by = 'devgated (input policy)';
    if (decision.verdict === 'deny') {
      this.states.set(key, { device, verdict: 'deny', events: [] });
      this.options.audit({
        action: 'input-policy',
        device,
        frontend: target,
        outcome: 'denied',
        reason: `deny: ${decision.reason}`,
        by,
      });
      return;
    }
    if (decision.verdict === 'allow') {
      this.allow(device, decision.target ?? target, decision.events, `allow: ${decision.reason}`, by);
      return;
    }
    const pending: InputProxyState = { device, verdict: 'pending', events: decision.events };
    this.states.set(key, pending);
    const remembered = decision.candidates
      .map((frontend) => ({ frontend, verdict: this.options.remembered?.(device, frontend) }))
      .find((r) => r.verdict !== undefined);
    if (remembered?.verdict === 'deny') {
      this.states.set(key, { device, verdict: 'deny', events: [] });
      this.options.audit({
        action: 'input-policy',
        device,
        frontend: remembered.frontend,
        outcome: 'denied',
        reason: 'deny: a remembered answer',
        by,
      });
      return;
    }
    if (remembered?.verdict === 'allow') {
      this.allow(
        device,
        remembered.frontend,
        eventsGoingTo(decision, remembered.frontend),
        'allow: a remembered answer',
        by,
      );
      return;
    }
    const candidates = orderCandidates(decision);
    const reason = askReason(device, decision, target);
    this.options.audit({
      action: 'input-policy',
      device,
      frontend: candidates[0],
      outcome: 'ok',
      reason: `ask: ${decision.reason}`,
      by,
    });
    const answer = await this.options.ask(device, candidates, reason, describeDevice(device));
    // Pulled, replaced, or decided again while the question was open: the answer is about nothing.
    if (this.states.get(key) !== pending) return;
    const frontend = answer.frontend ?? decision.defaultTarget ?? candidates[0];
    this.options.audit({
      action: 'answer',
      device,
      frontend,
      outcome: answer.verdict === 'allow' ? 'ok' : 'denied',
      reason: `${answer.verdict} (${answer.by === 'timeout' ? 'no answer before the timeout' : `answered by ${answer.by}`}): ${reason}`,
      by: answer.by,
    });
    if (answer.verdict !== 'allow') {
      this.states.set(key, { device, verdict: 'deny', events: [] });
      return;
    }
    this.allow(device, frontend, eventsGoingTo(decision, frontend), undefined, answer.by);
  }

  private allow(
    device: DeviceInfo,
    frontend: string,
    events: readonly string[],
    audit: string | undefined,
    by: string,
  ) {
    this.states.set(portKey(device.port), { device, verdict: 'allow', frontend, events });
    if (audit) this.options.audit({ action: 'input-policy', device, frontend, outcome: 'ok', reason: audit, by });
    const forward = this.options.forward?.(device, frontend, events);
    if (forward) this.forwards.set(portKey(device.port), forward);
  }

  private stopForward(key: string, why: ForwardStop): void {
    this.forwards.get(key)?.stop(why);
    this.forwards.delete(key);
  }

  dispose(): void {
    for (const off of this.handlers.splice(0)) off();
    for (const key of [...this.forwards.keys()]) this.stopForward(key, 'proxy-stopped');
  }
}

/** What a decision is about, besides the device: the calls its event nodes make. */
const SAME_NODES = ['event-nodes', 'event-devices', 'qubes-calls'] as const;

/** The default target first (it is what the question preselects), then the others. */
function orderCandidates(decision: InputDeviceDecision): string[] {
  const rest = decision.candidates.filter((c) => c !== decision.defaultTarget);
  return decision.defaultTarget ? [decision.defaultTarget, ...rest] : [...rest];
}

/** The question's text: the device, named once, and what its calls would send where. */
export function askReason(device: DeviceInfo, decision: InputDeviceDecision, target: string): string {
  const d = device.data;
  const name = device.name ?? device.product ?? 'unnamed device';
  const parts = [
    `input from ${portLabel(device.port)} (${name}, ${String(d['vendor-id'])}:${String(d['product-id'])}, ` +
      `${String(d['input-class'])}, ${String(d.bus)}, interfaces ${device.interfaces.join(' ')}) to ${target}`,
    `event nodes ${decision.events.join(',') || '-'}`,
    decision.reason,
  ];
  if (typeof d.warning === 'string') parts.unshift(`WARNING: ${d.warning}`);
  return parts.join('; ');
}

/**
 * The rules devgated's input proxy applies: the policy at `$DEVGATE_INPUT_POLICY` (paths separated by
 * `:`, directories read as policy.d), else /etc/devgate/policy.d; where none of it exists, Qubes'
 * installer defaults for each backend. A policy with an error denies everything, as qrexec refuses
 * every call then. Read at each decision, so an edit applies to the next device.
 */
export function inputProxyPolicy(
  manager: DeviceManager,
  warn: (message: string) => void,
  target: (backend: string) => string = () => 'dom0',
  env: NodeJS.ProcessEnv = process.env,
): () => readonly PolicyRule[] {
  return () => {
    const paths = (env.DEVGATE_INPUT_POLICY ?? DEFAULT_INPUT_POLICY_DIR).split(':').filter(Boolean);
    const dirs = paths.filter((p) => fs.statSync(p, { throwIfNoEntry: false })?.isDirectory());
    const files = paths.filter((p) => !dirs.includes(p));
    const backends = [...new Set(manager.sources.map((s) => s.backend))];
    const policy = effectiveInputPolicy({ dirs, files }, backends, target);
    if (policy.issues.length > 0) {
      const first = policy.issues[0];
      warn(
        `input policy has ${policy.issues.length} problem(s), every input call is denied; first: ${first.file}:${first.line}:${first.column}: ${first.message}`,
      );
      return [];
    }
    return policy.rules;
  };
}
