import {
  type DeviceEvent,
  type DeviceInfo,
  type DeviceManager,
  type Port,
  assignmentsFor,
  describeDevice,
  errorCode,
  portKey,
  portLabel,
  specificity,
} from '@devgate/core';
import { type DeviceService, type SqliteStateStore, type StoredAssignment } from '@devgate/service';
import { type AskService } from './asks.js';

export const AUTO_ATTACH_ACTOR = 'devgated (auto-attach)';

/** The first wait before a refusal that may end by itself is tried again; it doubles up to the cap. */
export const RETRY_FIRST_MS = 2_000;
export const RETRY_MAX_MS = 5 * 60_000;

/** Refusals because of another attachment: tried again as soon as any attachment ends. */
const FREED_BY_A_DETACH = new Set([
  'DG_OVERLAP',
  'DG_ALREADY_ATTACHED',
  'DG_ATTACH_IN_PROGRESS',
  'DG_BUSY',
  'DG_FRONTEND_DEV_IN_USE',
  'DG_NO_FREE_FRONTEND',
  'DG_NO_FREE_EXPORT_PORT',
]);

/**
 * Refusals whose cause can end with no event auto-attach is sure to see (a partition unmounted, a
 * deny list edited, QEMU, libvirt or an agent answering again), with FREED_BY_A_DETACH: tried again
 * after RETRY_FIRST_MS, doubling up to RETRY_MAX_MS. A stuck device then costs a few hundred audit
 * rows a day, not one per pass (43,000). Any other refusal (the device, its backend or the frontend
 * cannot do it) is not tried again until something changes: the device plugged again, the frontend
 * started, the assignment changed.
 */
const MAY_END_BY_ITSELF = /^DG_(DEVICE_IN_USE|POLICY_DENIED|QMP_|LIBVIRT_|AGENT_|STATE_|INTERNAL|DRIVER_)/;

/** An auto-attach that failed, for one assignment and one device in one port. */
interface Failure {
  readonly assignment: string;
  readonly port: string;
  readonly frontend: string;
  readonly code: string;
  readonly attempts: number;
  /** Infinity: not before something changes. */
  dueAt: number;
  /** A person allowed it (an ask): trying again does not ask again. */
  readonly allowed: boolean;
}

/** A person detached this device from this frontend: it stays detached from there until a change. */
interface StandingDetach {
  readonly port: string;
  readonly frontend: string;
  /** The frontend's assignments of the device then: another set is a changed assignment. */
  readonly assignments: string;
}

/**
 * Attaches devices that assignments name: when a device appears, when its frontend starts (seen by
 * a periodic pass), and when devgated starts. Most specific assignment first; several equally
 * specific running candidates, or mode `ask-to-attach`, become an ask instead.
 *
 * As in Qubes, a person's detach stands until the device is plugged again, the frontend starts again
 * or the assignment is changed; a refused auto-attach waits for the same, or for its cause to end.
 */
export class AutoAttach {
  private readonly busy = new Set<string>();
  /** Devices a person said no to, until they are unplugged: one question per insertion. */
  private readonly declined = new Map<string, string>();
  /** By assignment and device: one audit row per refusal, not one per pass. */
  private readonly failures = new Map<string, Failure>();
  /** By device and frontend. */
  private readonly standing = new Map<string, StandingDetach>();
  /** Devices added since the last look: a hotplug burst is matched against one read of the assignments. */
  private added: DeviceInfo[] = [];
  private addedLook?: NodeJS.Immediate;
  private timer?: NodeJS.Timeout;
  private readonly passes = new Set<Promise<void>>();
  private readonly listeners: (() => void)[] = [];

  constructor(
    private readonly manager: DeviceManager,
    private readonly store: SqliteStateStore,
    private readonly asks: AskService,
    private readonly devices: DeviceService,
    private readonly intervalMs = 2000,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    this.listen('added', ({ device }) => {
      this.forgetPort(portKey(device.port));
      if (this.added.push(device) === 1) this.addedLook = setImmediate(() => this.considerAdded());
    });
    this.listen('removed', ({ device }) => this.forgetPort(portKey(device.port)));
    this.listen('changed', ({ device, previous }) => {
      if (device.deviceId !== previous.deviceId) this.forgetPort(portKey(device.port));
      else if (this.failures.size > 0) {
        // A part of a device unmounted or released: the device may be free now.
        const chain = this.manager.chainOf(device);
        if (this.wake((f) => f.code === 'DG_DEVICE_IN_USE' && chain.includes(f.port))) void this.reconcile();
      }
    });
    // Attached there again (by hand): a later detach is a new one.
    this.listen('attached', ({ device, frontend }) => this.standing.delete(standKey(device, frontend)));
    // A device freed by a detach or a removal may be wanted elsewhere.
    this.listen('detached', ({ device, frontend }) => {
      if (this.detachRequested(device.port, frontend)) this.stand(device, frontend);
      this.wake((f) => FREED_BY_A_DETACH.has(f.code));
      void this.reconcile();
    });
    // A re-inserted device waits for its old attachment's detach to finish (the kernel holds it).
    this.listen('attachment-ended', (event) => {
      // Detached outside devgate (virsh detach-device, QMP device_del): a person's detach too. Its
      // `detached` came first, but the pass it started decides only after an await, so after this.
      const device = this.manager.get(event.port);
      const same = device && (event.deviceId === undefined || event.deviceId === device.deviceId);
      if (event.reason === 'removed-by-frontend' && same) this.stand(device, event.frontend);
      this.wake((f) => FREED_BY_A_DETACH.has(f.code));
      void this.reconcile();
    });
    this.listen('domain', ({ domain, state }) => {
      // A stopped frontend's next run is a start: a detach or a failure there no longer stands.
      if (state === 'started' || state === 'stopped' || state === 'undefined') this.forgetFrontend(domain);
      if (state === 'started' || state === 'resumed') void this.reconcile();
    });
    void this.reconcile();
    this.timer = setInterval(() => void this.reconcile(), this.intervalMs);
    this.timer.unref();
  }

  /** One pass over every device that some assignment names; resolves when it is over. */
  reconcile(): Promise<void> {
    const assignments = this.store.assignments.list();
    if (this.failures.size > 0) {
      // Failures of assignments since removed or changed are about nothing now.
      const current = new Set(assignments.map(assignmentId));
      for (const [key, failure] of this.failures) if (!current.has(failure.assignment)) this.failures.delete(key);
    }
    if (assignments.length === 0) return Promise.resolve();
    const classes = new Set(assignments.map((a) => a.devclass));
    const passes: Promise<void>[] = [];
    for (const device of this.manager.list())
      if (classes.has(device.port.devclass)) passes.push(this.consider(device, assignments));
    return Promise.all(passes).then(() => undefined);
  }

  /** Resolves once no pass is in flight, those of a hotplug burst not yet looked at included. */
  async settled(): Promise<void> {
    while (this.passes.size > 0 || this.addedLook) {
      if (this.addedLook) await new Promise((resolve) => setImmediate(resolve));
      await Promise.allSettled([...this.passes]);
    }
  }

  /** The devices a hotplug pass added, once it is over (it emits them one by one). */
  private considerAdded(): void {
    const added = this.added;
    this.added = [];
    this.addedLook = undefined;
    const assignments = this.store.assignments.list();
    if (assignments.length > 0) for (const device of added) void this.consider(device, assignments);
  }

  async consider(
    device: DeviceInfo,
    assignments: readonly StoredAssignment[] = this.store.assignments.list(),
  ): Promise<void> {
    const key = portKey(device.port);
    if (device.attachment || device.hiddenReason || this.busy.has(key)) return;
    if (this.declined.get(key) === device.deviceId) return;
    // Stored assignments are never `manual`: a manual attach is not persisted.
    const candidates = assignmentsFor(assignments, device);
    if (candidates.length === 0) return;
    this.busy.add(key);
    const pass = this.attempt(device, candidates);
    this.passes.add(pass);
    try {
      await pass;
    } finally {
      this.passes.delete(pass);
      this.busy.delete(key);
    }
  }

  private async attempt(device: DeviceInfo, candidates: readonly StoredAssignment[]): Promise<void> {
    const running: StoredAssignment[] = [];
    for (const assignment of candidates) if (await this.isRunning(assignment.frontend)) running.push(assignment);
    if (running.length === 0) return;
    const best = running.filter((a) => specificity(a) === specificity(running[0]));
    const assignedTo = [...new Set(best.map((a) => a.frontend))];
    // Not to a frontend a person detached it from; nor, instead, to a less specific assignment.
    const open = best.filter((a) => !this.detachStands(device, a.frontend, candidates));
    if (open.length === 0) return;
    const failures = open.map((a) => this.failures.get(failureKey(a, device)));
    // One try per change: not asked again either, only to fail again.
    if (failures.some((f) => f && f.dueAt > this.now())) return;
    const frontends = [...new Set(open.map((a) => a.frontend))];
    let chosen = open[0];
    const remembered = this.store.answers.lookup(device, chosen.frontend);
    if (remembered?.verdict === 'deny') return;
    const allowedBefore = open.find((_a, i) => failures[i]?.allowed);
    let allowed = allowedBefore !== undefined;
    if (allowedBefore) chosen = allowedBefore;
    else if ((assignedTo.length > 1 || chosen.mode === 'ask-to-attach') && remembered?.verdict !== 'allow') {
      const reason =
        assignedTo.length > 1
          ? `assigned to ${assignedTo.join(', ')}`
          : `assigned to ${chosen.frontend} (ask-to-attach)`;
      const answer = await this.asks.ask(device, frontends, reason, describeDevice(device));
      this.devices.audit({
        devclass: device.port.devclass,
        backend: device.port.backend,
        portId: device.port.portId,
        deviceId: device.deviceId,
        actor: answer.by,
        action: 'answer',
        frontend: answer.frontend ?? frontends[0],
        outcome: answer.verdict === 'allow' ? 'ok' : 'denied',
        reason: `${answer.verdict} (${reason})`,
      });
      if (answer.verdict !== 'allow') {
        this.declined.set(portKey(device.port), device.deviceId);
        return;
      }
      chosen = open.find((a) => a.frontend === (answer.frontend ?? frontends[0])) ?? chosen;
      allowed = true;
    }
    // The device may have gone, been swapped, or been attached by someone else while we asked:
    // the attach below names the device asked about, so another one in the port is refused.
    const current = this.manager.get(device.port);
    if (!current || current.attachment || current.deviceId !== device.deviceId) return;
    const key = failureKey(chosen, device);
    try {
      await this.devices.attach(
        {
          devclass: device.port.devclass,
          frontend: chosen.frontend,
          device: `${portLabel(device.port)}`,
          deviceId: device.deviceId,
          options: chosen.options,
        },
        AUTO_ATTACH_ACTOR,
        'auto-attach',
      );
      this.failures.delete(key);
    } catch (error) {
      // Audited by the service, once: remembered so that the next pass does not do it again.
      this.failed(key, chosen, device, errorCode(error), allowed);
    }
  }

  private failed(key: string, assignment: StoredAssignment, device: DeviceInfo, code: string, allowed: boolean): void {
    const attempts = (this.failures.get(key)?.attempts ?? 0) + 1;
    const retried = FREED_BY_A_DETACH.has(code) || MAY_END_BY_ITSELF.test(code);
    this.failures.set(key, {
      assignment: assignmentId(assignment),
      port: portKey(device.port),
      frontend: assignment.frontend,
      code,
      attempts,
      dueAt: retried ? this.now() + Math.min(RETRY_FIRST_MS * 2 ** (attempts - 1), RETRY_MAX_MS) : Infinity,
      allowed,
    });
  }

  /** Makes these remembered failures due now; true when there was one. */
  private wake(which: (failure: Failure) => boolean): boolean {
    let woken = false;
    for (const failure of this.failures.values()) {
      if (failure.dueAt > 0 && which(failure)) {
        failure.dueAt = 0;
        woken = true;
      }
    }
    return woken;
  }

  /**
   * A detach asked of devgated (the API: the CLI, the tray), as opposed to one the kernel made (a
   * surprise removal, a frontend that stopped): its journal entry is open while the kernel detaches.
   */
  private detachRequested(port: Port, frontend: string): boolean {
    return this.store.journal
      .pending()
      .some(
        (e) =>
          e.op === 'detach' &&
          e.frontend === frontend &&
          e.devclass === port.devclass &&
          e.backend === port.backend &&
          e.portId === port.portId,
      );
  }

  private stand(device: DeviceInfo, frontend: string): void {
    const assignments = ofFrontend(assignmentsFor(this.store.assignments.list(), device), frontend);
    if (assignments === '') return; // nothing would attach it there again
    this.standing.set(standKey(device, frontend), { port: portKey(device.port), frontend, assignments });
  }

  private detachStands(device: DeviceInfo, frontend: string, candidates: readonly StoredAssignment[]): boolean {
    const key = standKey(device, frontend);
    const stand = this.standing.get(key);
    if (!stand) return false;
    if (stand.assignments === ofFrontend(candidates, frontend)) return true;
    this.standing.delete(key); // the assignment was changed since: it applies again
    return false;
  }

  private forgetPort(port: string): void {
    this.declined.delete(port);
    for (const [key, failure] of this.failures) if (failure.port === port) this.failures.delete(key);
    for (const [key, stand] of this.standing) if (stand.port === port) this.standing.delete(key);
  }

  private forgetFrontend(frontend: string): void {
    for (const [key, failure] of this.failures) if (failure.frontend === frontend) this.failures.delete(key);
    for (const [key, stand] of this.standing) if (stand.frontend === frontend) this.standing.delete(key);
  }

  private async isRunning(frontend: string): Promise<boolean> {
    const connector = this.manager.connectors.find((c) => c.manages(frontend));
    if (!connector) return false;
    const running = await connector.isRunning(frontend).catch(() => undefined);
    // Seen stopped (a connector without lifecycle events): its next run is a start.
    if (running === false) this.forgetFrontend(frontend);
    return running === true;
  }

  private listen<T extends DeviceEvent['type']>(
    type: T,
    handler: (event: Extract<DeviceEvent, { type: T }>) => void,
  ): void {
    this.manager.on(type, handler as never);
    this.listeners.push(() => this.manager.off(type, handler as never));
  }

  dispose(): void {
    for (const stop of this.listeners.splice(0)) stop();
    clearInterval(this.timer);
    if (this.addedLook) clearImmediate(this.addedLook);
    this.addedLook = undefined;
    this.added = [];
  }
}

/** An assignment as stored: another mode, other options or a new one make another id. */
function assignmentId(a: StoredAssignment): string {
  return JSON.stringify([a.devclass, a.backend, a.portId, a.deviceId, a.frontend, a.mode, a.options, a.createdAt]);
}

function ofFrontend(assignments: readonly StoredAssignment[], frontend: string): string {
  return assignments
    .filter((a) => a.frontend === frontend)
    .map(assignmentId)
    .sort()
    .join('\n');
}

function failureKey(assignment: StoredAssignment, device: DeviceInfo): string {
  return JSON.stringify([assignmentId(assignment), portKey(device.port), device.deviceId]);
}

function standKey(device: DeviceInfo, frontend: string): string {
  return JSON.stringify([portKey(device.port), device.deviceId, frontend]);
}
