import { type DeviceEvent, type DeviceManager } from '@devgate/core';
import { type DaemonEvents, type DeviceService, type SqliteStateStore } from '@devgate/service';
import { PolicyStateService } from './policy-state-service.js';

export const REMOVED_DOMAIN_ACTOR = 'devgated (VM removed)';

/**
 * A VM that is gone for good (undefined in libvirt, or taken out of the domain registry) takes its
 * assignments and remembered answers with it, as `qvm-remove` does in Qubes. Kept, they would pass to
 * the next VM given the same name: a stick auto-attached to it, a keyboard allowed once for the old
 * one. Its deny list stays (it only ever refuses). Only a positive word that the VM is gone counts
 * (a libvirt that cannot be reached, or a registry that cannot be read, says nothing), and only when
 * no hypervisor connector still manages a VM of that name.
 */
export class RemovedDomains {
  private readonly answers: PolicyStateService;
  private readonly onDomain = (event: Extract<DeviceEvent, { type: 'domain' }>) => {
    if (event.state === 'undefined') this.forget(event.domain);
  };

  constructor(
    private readonly manager: DeviceManager,
    private readonly store: SqliteStateStore,
    events: DaemonEvents,
    private readonly devices: DeviceService,
    private readonly warn: (fields: object, message: string) => void,
  ) {
    this.answers = new PolicyStateService(store, events);
  }

  start(): void {
    this.manager.on('domain', this.onDomain);
  }

  /** Each assignment and answer goes with an audit row of its own, as when a person removes it. */
  forget(domain: string): void {
    if (this.manager.connectors.some((connector) => connector.manages(domain))) return;
    try {
      const classes = new Set(this.store.assignments.list({ frontend: domain }).map((a) => a.devclass));
      for (const devclass of classes) this.devices.unassign({ devclass, frontend: domain }, REMOVED_DOMAIN_ACTOR);
      this.answers.forgetAnswers({ frontend: domain }, REMOVED_DOMAIN_ACTOR);
    } catch (error) {
      // The store refusing (full disk, locked): what was not removed stays, and is said.
      this.warn({ err: error, domain }, 'the assignments of a removed VM could not all be removed');
    }
  }

  dispose(): void {
    this.manager.off('domain', this.onDomain);
  }
}
