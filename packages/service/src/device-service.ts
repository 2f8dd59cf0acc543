import {
  type AssignmentMode,
  type AttachmentEndedEvent,
  type DeviceInfo,
  type DeviceJson,
  type DeviceManager,
  DevgateError,
  Errors,
  type Port,
  deviceToJson,
  errorCode,
  isDenied,
  type PolicyHook,
  parseDeviceArgument,
  portKey,
  portLabel,
  sanitizeText,
} from '@devgate/core';
import { type StoredAssignment } from './store/assignments.js';
import { type JournalEntry } from './store/attachment-journal.js';
import { type AuditEntryInput } from './store/audit-log.js';
import { type SqliteStateStore } from './store/state-store.js';
import * as check from './store/validate.js';
import { type DaemonEvents } from './daemon-events.js';

/**
 * The deny lists: interface patterns a frontend never receives (Qubes R4.3). The store is asked
 * for lazily, so a command that only lists never opens it.
 */
export function denyListHook(store: () => SqliteStateStore): PolicyHook {
  return {
    id: 'deny-list',
    preAttach: ({ device, frontend }) =>
      isDenied(store().denyLists.get(frontend), device)
        ? { verdict: 'deny', reason: `its interfaces are on ${frontend}'s deny list` }
        : { verdict: 'allow' },
  };
}

/** Codes that mean "something broke", as opposed to "devgate said no". */
const FAILURE_CODES = /^DG_(QMP_|DOMAIN_NOT_RUNNING|DETACH_TIMEOUT|INTERNAL|STATE_)/;

export interface AttachInput {
  readonly devclass: string;
  readonly frontend: string;
  readonly device: string;
  readonly options?: Readonly<Record<string, string>>;
  /** The device that must be in the port (an ask's answer is about one device, not a port). */
  readonly deviceId?: string;
}

export interface AssignInput extends AttachInput {
  readonly mode: Exclude<AssignmentMode, 'manual'>;
  /** `port`: any device in this port; `device`: this device in any port; neither: both must match. */
  readonly only?: 'port' | 'device';
}

/**
 * The verbs devgated offers, each journaled where it touches a hypervisor and audited whatever its
 * outcome: who, what, when, why.
 */
export class DeviceService {
  constructor(
    private readonly manager: DeviceManager,
    private readonly store: SqliteStateStore,
    private readonly events: DaemonEvents,
  ) {}

  audit(entry: AuditEntryInput): void {
    const stored = this.store.audit.append(entry);
    this.events.publish({ type: 'audit', entry: stored });
  }

  /** The VM named first, before the device, as Qubes' tools check their arguments. */
  private requireFrontend(frontend: string): void {
    if (!this.manager.connectors.some((c) => c.manages(frontend))) throw Errors.noConnector({ domain: frontend });
  }

  private port(devclass: string, device: string): { port: Port; deviceId?: string } {
    const { backend, portId, deviceId } = parseDeviceArgument(device);
    return { port: { devclass, backend, portId }, deviceId };
  }

  async attach(input: AttachInput, actor: string, action = 'attach'): Promise<DeviceJson> {
    const parsed = this.port(input.devclass, input.device);
    const { port } = parsed;
    const deviceId = input.deviceId ?? parsed.deviceId;
    const known = this.manager.get(port);
    // Begun inside the try: a name the journal refuses is a refusal, audited like any other.
    let journal: JournalEntry | undefined;
    try {
      this.requireFrontend(input.frontend);
      journal = this.store.journal.begin({
        op: 'attach',
        devclass: port.devclass,
        backend: port.backend,
        portId: port.portId,
        deviceId: known?.deviceId,
        frontend: input.frontend,
        options: input.options ?? {},
      });
      const device = await this.manager.attach({
        frontend: input.frontend,
        port,
        deviceId,
        options: input.options,
        requestedBy: actor,
      });
      this.settle(journal.id, {
        ...this.target(device),
        actor,
        action,
        frontend: input.frontend,
        outcome: 'ok',
        details: { options: device.attachment?.options ?? {} },
      });
      return deviceToJson(device);
    } catch (error) {
      if (journal) this.store.journal.fail(journal.id, errorCode(error));
      this.auditFailure(error, { ...this.target(known, port), actor, action, frontend: input.frontend });
      throw error;
    }
  }

  async detach(input: Omit<AttachInput, 'device'> & { readonly device?: string }, actor: string): Promise<string[]> {
    const port = input.device === undefined ? undefined : this.port(input.devclass, input.device).port;
    const wildcard = port?.portId === '*';
    const known = port && !wildcard ? this.manager.get(port) : undefined;
    const failure = { ...this.target(known, port), actor, action: 'detach', frontend: input.frontend };
    let targets: Port[];
    try {
      targets = this.detachTargets(input);
    } catch (error) {
      this.auditFailure(error, failure);
      throw error;
    }
    // One intent per device: without a port (or with `*`), each device of the class attached to the
    // frontend now. A wildcard intent fails the store's checks (every such detach was refused), and
    // could not be settled against what the hypervisor reports after a crash anyway.
    const journals = targets.map((p) =>
      this.store.journal.begin({
        op: 'detach',
        devclass: p.devclass,
        backend: p.backend,
        portId: p.portId,
        frontend: input.frontend,
      }),
    );
    const done: Port[] = [];
    const settleAll = (code: string) => {
      const detachedKeys = new Set(done.map(portKey));
      targets.forEach((p, i) => {
        if (!detachedKeys.has(portKey(p))) return this.store.journal.fail(journals[i].id, code);
        this.settle(journals[i].id, {
          ...this.target(this.manager.get(p), p),
          actor,
          action: 'detach',
          frontend: input.frontend,
          outcome: 'ok',
        });
      });
    };
    // One device at a time: one that fails (a disk attached by hand under libvirt) leaves the others
    // detached and recorded as such, and its own failure is the command's.
    let firstError: unknown;
    for (const p of targets) {
      try {
        done.push(...(await this.manager.detach(input.frontend, p)));
      } catch (error) {
        firstError ??= error;
      }
    }
    if (firstError !== undefined) {
      settleAll(errorCode(firstError));
      this.auditFailure(firstError, failure);
      throw firstError;
    }
    settleAll('DG_NOT_ATTACHED');
    return done.map(portLabel);
  }

  /**
   * The ports a detach names, as Qubes' qvm-device reads its argument: none, every device of the
   * class attached to the frontend; `BACKEND:*[:DEVICE_ID]`, those of that backend (with that ID),
   * at least one; `BACKEND:PORT:DEVICE_ID`, the port only if that device is in it.
   */
  private detachTargets(input: { frontend: string; devclass: string; device?: string }): Port[] {
    this.requireFrontend(input.frontend);
    const parsed = input.device === undefined ? undefined : this.port(input.devclass, input.device);
    const deviceId = parsed?.deviceId === '*' ? undefined : parsed?.deviceId;
    if (parsed && parsed.port.portId !== '*') {
      const inPort = this.manager.get(parsed.port);
      if (deviceId !== undefined && inPort?.deviceId !== deviceId) {
        throw Errors.notAttached({
          device: input.device!,
          inPort: { port: portLabel(parsed.port), deviceId: inPort?.deviceId },
        });
      }
      return [parsed.port];
    }
    const attached = this.manager
      .list({ devclass: input.devclass, includeHidden: true })
      .filter((d) => d.attachment?.frontend === input.frontend)
      .filter(
        (d) =>
          !parsed || (d.port.backend === parsed.port.backend && (deviceId === undefined || d.deviceId === deviceId)),
      );
    if (parsed && attached.length === 0) throw Errors.notAttached({ device: input.device! });
    return attached.map((d) => d.port);
  }

  /**
   * The audit of an attachment the kernel ended by itself (the device was pulled, the frontend
   * stopped), written once the hypervisor was told, with the real outcome.
   */
  attachmentEnded(event: AttachmentEndedEvent): void {
    const reasons: Record<AttachmentEndedEvent['reason'], string> = {
      'device-removed': 'the device disappeared from its backend while attached',
      'frontend-stopped': `${event.frontend} stopped`,
      'removed-by-frontend': `the device was removed from ${event.frontend} outside devgate`,
      'device-replaced': 'another device is in the port now',
    };
    const failed = event.outcome === 'error';
    this.audit({
      actor: 'devgated',
      action: event.reason === 'device-removed' ? 'surprise-removal' : 'attachment-ended',
      devclass: event.port.devclass,
      backend: event.port.backend,
      portId: event.port.portId,
      deviceId: event.deviceId,
      frontend: event.frontend,
      outcome: failed ? 'error' : 'ok',
      code: failed ? errorCode(event.error) : undefined,
      reason: printable(
        `${reasons[event.reason]}; ${failed ? `detaching it failed: ${event.error?.message}` : 'the attachment ended'}`,
      ),
    });
  }

  /** Settles a journal entry and writes its audit row in one transaction: neither without the other. */
  private settle(journalId: number, entry: AuditEntryInput): void {
    const stored = this.store.transaction(() => {
      this.store.journal.complete(journalId);
      return this.store.audit.append(entry);
    });
    this.events.publish({ type: 'audit', entry: stored });
  }

  assign(input: AssignInput, actor: string): StoredAssignment {
    // An unknown VM is refused as attach refuses it (Qubes' `no such domain`): stored, its assignment
    // would wait for a VM that never comes, or go to whichever VM is given that name later.
    let key: ReturnType<DeviceService['assignmentKey']> | undefined;
    try {
      this.requireFrontend(input.frontend);
      key = this.assignmentKey(input);
      if (key.deviceId === undefined) {
        throw Errors.unknownDevice({ backend: key.backend, devclass: input.devclass, port: key.portId });
      }
    } catch (error) {
      const where = key && { backend: key.backend, portId: key.portId };
      this.auditFailure(error, {
        devclass: input.devclass,
        ...where,
        actor,
        action: 'assign',
        frontend: input.frontend,
      });
      throw error;
    }
    const entry = {
      devclass: input.devclass,
      backend: key.backend,
      portId: key.portId,
      deviceId: key.deviceId,
      actor,
      action: 'assign',
      frontend: input.frontend,
    };
    try {
      // One transaction: a crash can never leave the assignment without its audit record.
      const [stored, audited] = this.store.transaction(
        () =>
          [
            this.store.assignments.add({
              ...entry,
              deviceId: key.deviceId!,
              mode: input.mode,
              options: input.options ?? {},
            }),
            this.store.audit.append({
              ...entry,
              outcome: 'ok',
              details: { mode: input.mode, options: input.options ?? {} },
            }),
          ] as const,
      );
      this.events.publish({ type: 'audit', entry: audited });
      return stored;
    } catch (error) {
      this.auditFailure(error, entry);
      throw error;
    }
  }

  /** Removes a frontend's assignments of this device (every one of the class without a device). */
  unassign(input: Omit<AssignInput, 'device' | 'mode'> & { readonly device?: string }, actor: string): number {
    let key: ReturnType<DeviceService['assignmentKey']> | undefined;
    let matches: StoredAssignment[];
    try {
      key = input.device === undefined ? undefined : this.assignmentKey({ ...input, device: input.device });
      matches = this.store.assignments
        .list({ devclass: input.devclass, frontend: input.frontend })
        .filter(
          (a) =>
            !key ||
            (a.backend === key.backend &&
              a.portId === key.portId &&
              (key.deviceId === undefined || a.deviceId === key.deviceId)),
        );
      if (key && matches.length === 0)
        throw Errors.notAssigned({ devclass: input.devclass, device: input.device!, frontend: input.frontend });
    } catch (error) {
      // Refused like attach and assign: audited, whatever the outcome.
      this.auditFailure(error, {
        devclass: input.devclass,
        backend: key?.backend,
        portId: key?.portId,
        deviceId: key?.deviceId,
        actor,
        action: 'unassign',
        frontend: input.frontend,
      });
      throw error;
    }
    // One transaction: every removal with its audit record, or none of them.
    const audited = this.store.transaction(() =>
      matches.map((a) => {
        this.store.assignments.remove(a);
        return this.store.audit.append({
          devclass: a.devclass,
          backend: a.backend,
          portId: a.portId,
          deviceId: a.deviceId,
          actor,
          action: 'unassign',
          frontend: a.frontend,
          outcome: 'ok',
        });
      }),
    );
    for (const entry of audited) this.events.publish({ type: 'audit', entry });
    return matches.length;
  }

  /** Qubes' rules: `--port` means any device in the port, `--device` this device in any port. */
  private assignmentKey(input: Pick<AssignInput, 'devclass' | 'device' | 'only'>): {
    backend: string;
    portId: string;
    deviceId?: string;
  } {
    const { port, deviceId } = this.port(input.devclass, input.device);
    if (input.only === 'port') return { backend: port.backend, portId: port.portId, deviceId: '*' };
    const identity = deviceId ?? this.manager.get(port)?.deviceId;
    return { backend: port.backend, portId: input.only === 'device' ? '*' : port.portId, deviceId: identity };
  }

  private target(
    device: DeviceInfo | undefined,
    port?: Port,
  ): Pick<AuditEntryInput, 'devclass' | 'backend' | 'portId' | 'deviceId'> {
    const p = device?.port ?? port;
    return { devclass: p?.devclass, backend: p?.backend, portId: p?.portId, deviceId: device?.deviceId };
  }

  private auditFailure(error: unknown, entry: Omit<AuditEntryInput, 'outcome'>): void {
    this.audit(failureAuditEntry(error, entry));
  }
}

/**
 * The audit row of a refused or failed request, for every writer of one (devgated's deny-list
 * changes too): 'denied' when devgate said no, 'error' when something broke (a failure's code, or
 * no devgate error at all), and recordable whatever the request held.
 */
export function failureAuditEntry(error: unknown, entry: Omit<AuditEntryInput, 'outcome'>): AuditEntryInput {
  const code = errorCode(error);
  const outcome = error instanceof DevgateError && !FAILURE_CODES.test(code) ? 'denied' : 'error';
  return recordable({ ...entry, outcome, code, reason: (error as Error).message });
}

/** Free text as the audit log keeps it: printable and bounded (an error's message echoes the request). */
function printable(text: string): string {
  return sanitizeText(text, check.MAX_TEXT) ?? '-';
}

/**
 * A refusal as the audit log can keep it, whatever the request held: a refused request is often
 * refused for the very name the store would refuse too (a newline in a device id), and the record of
 * it must not fail in turn. Such a name leaves its column for `details.invalid`, made printable.
 */
function recordable(entry: AuditEntryInput): AuditEntryInput {
  const invalid: Record<string, string> = {};
  const valid = (field: string, value: string | undefined, checkValue: (v: string) => unknown) => {
    if (value === undefined) return undefined;
    try {
      checkValue(value);
      return value;
    } catch {
      invalid[field] = sanitizeText(value, 512) ?? '-';
      return undefined;
    }
  };
  const fields = {
    devclass: valid('devclass', entry.devclass, check.devclass),
    backend: valid('backend', entry.backend, check.domainName),
    portId: valid('portId', entry.portId, (v) => check.portId(v, true)),
    deviceId: valid('deviceId', entry.deviceId, (v) => check.deviceId(v, true)),
    frontend: valid('frontend', entry.frontend, check.domainName),
  };
  return {
    ...entry,
    ...fields,
    reason: entry.reason === undefined ? undefined : printable(entry.reason),
    ...(Object.keys(invalid).length > 0 ? { details: { ...entry.details, invalid } } : {}),
  };
}
