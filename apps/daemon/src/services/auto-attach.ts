import {
  type DeviceInfo,
  type DeviceManager,
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

/**
 * Attaches devices that assignments name: when a device appears, when its frontend starts (seen by
 * a periodic pass), and when devgated starts. Most specific assignment first; several equally
 * specific running candidates, or mode `ask-to-attach`, become an ask instead.
 */
export class AutoAttach {
  private readonly busy = new Set<string>();
  /** Devices a person said no to, until they are unplugged: one question per insertion. */
  private readonly declined = new Map<string, string>();
  /** Devices added since the last look: a hotplug burst is matched against one read of the assignments. */
  private added: DeviceInfo[] = [];
  private addedLook?: NodeJS.Immediate;
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly manager: DeviceManager,
    private readonly store: SqliteStateStore,
    private readonly asks: AskService,
    private readonly devices: DeviceService,
    private readonly intervalMs = 2000,
  ) {}

  start(): void {
    this.manager.on('added', (event) => {
      if (this.added.push(event.device) === 1) this.addedLook = setImmediate(() => this.considerAdded());
    });
    this.manager.on('removed', (event) => this.declined.delete(portKey(event.device.port)));
    // A device freed by a detach or a removal may be wanted elsewhere; a frontend that starts
    // gets its devices again.
    this.manager.on('detached', () => this.reconcile());
    // A re-inserted device waits for its old attachment's detach to finish (the kernel holds it).
    this.manager.on('attachment-ended', () => this.reconcile());
    this.manager.on('domain', (event) => {
      if (event.state === 'started' || event.state === 'resumed') this.reconcile();
    });
    this.reconcile();
    this.timer = setInterval(() => this.reconcile(), this.intervalMs);
    this.timer.unref();
  }

  /** One pass over every device that some assignment names. */
  reconcile(): void {
    const assignments = this.store.assignments.list();
    if (assignments.length === 0) return;
    const classes = new Set(assignments.map((a) => a.devclass));
    for (const device of this.manager.list())
      if (classes.has(device.port.devclass)) void this.consider(device, assignments);
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
    try {
      const running: StoredAssignment[] = [];
      for (const assignment of candidates) if (await this.isRunning(assignment.frontend)) running.push(assignment);
      if (running.length === 0) return;
      const best = running.filter((a) => specificity(a) === specificity(running[0]));
      const frontends = [...new Set(best.map((a) => a.frontend))];
      let chosen = best[0];
      const remembered = this.store.answers.lookup(device, chosen.frontend);
      if (remembered?.verdict === 'deny') return;
      if ((frontends.length > 1 || chosen.mode === 'ask-to-attach') && remembered?.verdict !== 'allow') {
        const reason =
          frontends.length > 1
            ? `assigned to ${frontends.join(', ')}`
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
          this.declined.set(key, device.deviceId);
          return;
        }
        chosen = best.find((a) => a.frontend === (answer.frontend ?? frontends[0])) ?? chosen;
      }
      // The device may have gone, been swapped, or been attached by someone else while we asked:
      // the attach below names the device asked about, so another one in the port is refused.
      const current = this.manager.get(device.port);
      if (!current || current.attachment || current.deviceId !== device.deviceId) return;
      await this.devices
        .attach(
          {
            devclass: device.port.devclass,
            frontend: chosen.frontend,
            device: `${portLabel(device.port)}`,
            deviceId: device.deviceId,
            options: chosen.options,
          },
          AUTO_ATTACH_ACTOR,
          'auto-attach',
        )
        .catch((error: unknown) => void errorCode(error)); // audited by the service
    } finally {
      this.busy.delete(key);
    }
  }

  private async isRunning(frontend: string): Promise<boolean> {
    const connector = this.manager.connectors.find((c) => c.manages(frontend));
    return connector ? connector.isRunning(frontend).catch(() => false) : false;
  }

  dispose(): void {
    clearInterval(this.timer);
    if (this.addedLook) clearImmediate(this.addedLook);
    this.added = [];
  }
}
