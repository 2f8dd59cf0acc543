/**
 * Passthrough that survives a replug. QEMU's input-linux closes an event node whose device went away
 * and never opens it again ("QEMU/libvirt will not reopen the device when the device reconnects"), so
 * a keyboard pulled out and plugged back in would stay dead in the VM. devgated remembers what an input
 * device that vanished while attached was attached to, and when a device with the same identity (its
 * USB identity: vendor, product, serial, interfaces) comes back in the same backend, attaches it again
 * with the same options, through the one attach path (journal, checks, audit).
 *
 * A replug so quick that the backend's listing never saw the device gone shows as the same device
 * with other event nodes: the old nodes are dead in QEMU, so the passthrough is detached and attached
 * again (or only detached, if another device sits in the port now).
 *
 * Only a surprise removal is remembered: a detach, or a VM that stopped, ends the passthrough for good.
 * What is remembered lives in devgated's memory.
 */
import { type DeviceInfo, type DeviceManager, type Disposable } from '@devgate/core';
import { INPUT_CLASS_ID } from './parse-input-devices.js';

export interface InputReplugOptions {
  /** Attaches through devgated's service (journaled, checked, audited). */
  readonly attach: (
    device: DeviceInfo,
    frontend: string,
    options: Readonly<Record<string, string>>,
  ) => Promise<unknown>;
  /** Detaches through devgated's service. */
  readonly detach: (device: DeviceInfo, frontend: string) => Promise<unknown>;
}

interface Remembered {
  readonly backend: string;
  readonly frontend: string;
  readonly options: Readonly<Record<string, string>>;
  /** The kernel has detached the old attachment (QEMU let go of the dead nodes). */
  ended: boolean;
  /** The device came back before that: attached once it has. */
  waiting?: DeviceInfo;
}

export class InputReplug implements Disposable {
  /** By device identity. */
  private readonly remembered = new Map<string, Remembered>();
  private readonly busy = new Set<string>();
  private readonly handlers: (() => void)[] = [];

  constructor(
    private readonly manager: DeviceManager,
    private readonly options: InputReplugOptions,
  ) {}

  start(): void {
    const removed = ({ device }: { device: DeviceInfo }) => {
      if (device.port.devclass !== INPUT_CLASS_ID || !device.attachment) return;
      this.remembered.set(device.deviceId, {
        backend: device.port.backend,
        frontend: device.attachment.frontend,
        options: device.attachment.options,
        ended: false,
      });
    };
    // The kernel detaches a vanished device from its VM, then says so: only then may it go back in.
    const ended = (event: { port: { devclass: string }; deviceId?: string; reason: string }) => {
      if (event.port.devclass !== INPUT_CLASS_ID || event.reason !== 'device-removed' || !event.deviceId) return;
      const entry = this.remembered.get(event.deviceId);
      if (!entry) return;
      entry.ended = true;
      if (entry.waiting) void this.consider(entry.waiting);
    };
    // A device can show up before its event node does (hidden until then): `changed` brings the node.
    const appeared = ({ device }: { device: DeviceInfo }) => void this.consider(device);
    const changed = ({ device, previous }: { device: DeviceInfo; previous: DeviceInfo }) => {
      if (previous.attachment && device.port.devclass === INPUT_CLASS_ID) void this.renewed(previous, device);
      else void this.consider(device);
    };
    this.manager.on('removed', removed);
    this.manager.on('attachment-ended', ended);
    this.manager.on('added', appeared);
    this.manager.on('changed', changed);
    this.handlers.push(
      () => this.manager.off('removed', removed),
      () => this.manager.off('attachment-ended', ended),
      () => this.manager.off('added', appeared),
      () => this.manager.off('changed', changed),
    );
  }

  /** What waits for its device to come back: identity -> frontend. */
  pending(): { deviceId: string; backend: string; frontend: string }[] {
    return [...this.remembered].map(([deviceId, r]) => ({ deviceId, backend: r.backend, frontend: r.frontend }));
  }

  private async consider(device: DeviceInfo): Promise<void> {
    if (device.port.devclass !== INPUT_CLASS_ID || device.hiddenReason || device.attachment) return;
    const wanted = this.remembered.get(device.deviceId);
    if (!wanted || wanted.backend !== device.port.backend || this.busy.has(device.deviceId)) return;
    if (!wanted.ended) {
      wanted.waiting = device;
      return;
    }
    this.busy.add(device.deviceId);
    this.remembered.delete(device.deviceId);
    try {
      await this.options.attach(device, wanted.frontend, wanted.options);
    } catch {
      // Audited by the attach path; the passthrough ends here (the VM may have stopped meanwhile).
    } finally {
      this.busy.delete(device.deviceId);
    }
  }

  /**
   * An attached device whose event nodes are not the ones QEMU opened any more: other numbers, or the
   * same numbers reused by the kernel for a replugged device (other input instances).
   */
  private async renewed(previous: DeviceInfo, device: DeviceInfo): Promise<void> {
    const attachment = previous.attachment!;
    const sameNodes = (['event-devices', 'input-instances'] as const).every((k) => previous.data[k] === device.data[k]);
    if (sameNodes && previous.deviceId === device.deviceId) return;
    if (this.busy.has(device.deviceId)) return;
    this.busy.add(device.deviceId);
    try {
      await this.options.detach(previous, attachment.frontend);
      const now = this.manager.get(device.port);
      if (now && now.deviceId === previous.deviceId && !now.hiddenReason && !now.attachment) {
        await this.options.attach(now, attachment.frontend, attachment.options);
      }
    } catch {
      // Audited by the attach path.
    } finally {
      this.busy.delete(device.deviceId);
    }
  }

  dispose(): void {
    for (const off of this.handlers.splice(0)) off();
    this.remembered.clear();
  }
}
