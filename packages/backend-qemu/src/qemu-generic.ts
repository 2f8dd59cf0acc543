/**
 * The generic `qemu-device` kind (core's attach-kinds.ts): device_add of a named QEMU device with
 * properties, after the chardev, block node or QOM object it is linked to. Third-party drivers use
 * it for classes the connector has no code for (a serial adapter is `chardev-add serial` on its
 * node, then `device_add usb-serial chardev=...`).
 *
 * The spec is checked again here: only the backends in core's allowlist, no property that names a
 * host path, and the one host path (`path`) is what the backend's data path found by major:minor.
 * The device's qdev id carries the attachment as every devgate device's does, with the kind, so a
 * detach also removes the chardev, block node or object (which share the id, or a name derived
 * from it: chardevs, block nodes and objects are namespaces of their own).
 */
import { createHash } from 'node:crypto';
import {
  type AttachSpec,
  type DomainName,
  DriverContractError,
  type Port,
  QEMU_DEVICE_KIND,
  checkQemuDeviceParams,
} from '@devgate/core';
import { type AttachmentRecord, encodeQdevId } from './qemu-attach.js';

/** QMP on a domain: what the connector offers these helpers. */
interface QmpExecutor {
  execute<T = unknown>(domain: DomainName, command: string, args?: Readonly<Record<string, unknown>>): Promise<T>;
}

export interface QemuDevicePlanCommands {
  readonly qdevId: string;
  /** In order; each undone in reverse if a later one fails. */
  readonly steps: readonly {
    readonly add: [string, Record<string, unknown>];
    readonly undo: [string, Record<string, unknown>];
  }[];
  readonly options: Readonly<Record<string, string>>;
}

/** The block node of a generic attachment: at most 31 characters, derived from its qdev id. */
export function genericNodeName(qdevId: string): string {
  return `dgq-${createHash('sha256').update(qdevId).digest('base64url').slice(0, 24)}`;
}

/** Whether a node name is one `genericNodeName` makes (so devgate's to remove). */
export function isGenericNodeName(name: string): boolean {
  return /^dgq-[A-Za-z0-9_-]{24}$/.test(name);
}

/** The QMP commands of a filled-in `qemu-device` spec. */
export function planQemuDevice(port: Port, spec: AttachSpec, deviceId: string): QemuDevicePlanCommands {
  const { plan, problem } = checkQemuDeviceParams(spec.params, true);
  if (!plan) throw new DriverContractError(port.devclass, `qemu-device: ${problem}`);
  const options = { ...spec.options };
  const qdevId = encodeQdevId({
    c: port.devclass,
    b: port.backend,
    p: port.portId,
    d: deviceId,
    k: QEMU_DEVICE_KIND,
    o: options,
  });
  const steps: { add: [string, Record<string, unknown>]; undo: [string, Record<string, unknown>] }[] = [];
  const device: Record<string, unknown> = { driver: plan.device, id: qdevId, ...plan.properties };
  if (plan.chardev) {
    const data = plan.chardev === 'serial' ? { device: plan.path } : {};
    steps.push({
      add: ['chardev-add', { id: qdevId, backend: { type: plan.chardev, data } }],
      undo: ['chardev-remove', { id: qdevId }],
    });
    device.chardev = qdevId;
  }
  if (plan.blockdev) {
    const nodeName = genericNodeName(qdevId);
    steps.push({
      add: [
        'blockdev-add',
        { driver: 'host_device', 'node-name': nodeName, filename: plan.path, 'read-only': plan.blockdev.readOnly },
      ],
      undo: ['blockdev-del', { 'node-name': nodeName }],
    });
    device.drive = nodeName;
  }
  if (plan.object) {
    const object = {
      'qom-type': plan.object.type,
      id: qdevId,
      ...(plan.object.type === 'rng-random' ? { filename: plan.path } : {}),
    };
    steps.push({ add: ['object-add', object], undo: ['object-del', { id: qdevId }] });
    device[plan.object.link] = qdevId;
  }
  steps.push({ add: ['device_add', device], undo: ['device_del', { id: qdevId }] });
  return { qdevId, steps, options };
}

/**
 * The plan's steps as the connector's attach runs them: `add` runs them in order, `undo` removes in
 * reverse what went through, so the VM is left as it was.
 */
export function qemuDeviceSteps(
  qmp: QmpExecutor,
  frontend: DomainName,
  plan: QemuDevicePlanCommands,
): { add: () => Promise<void>; undo: () => Promise<void> } {
  const done: (typeof plan.steps)[number][] = [];
  return {
    add: async () => {
      for (const step of plan.steps) {
        await qmp.execute(frontend, ...step.add);
        done.push(step);
      }
    },
    undo: async () => {
      for (const step of done.reverse()) await qmp.execute(frontend, ...step.undo).catch(() => undefined);
    },
  };
}

/** After the device is unplugged: its chardev, block node and object go too (whichever it had). */
export async function removeGenericBackends(
  qmp: QmpExecutor,
  frontend: DomainName,
  qdevId: string,
  record: AttachmentRecord,
): Promise<void> {
  if (record.k !== QEMU_DEVICE_KIND) return;
  await qmp.execute(frontend, 'chardev-remove', { id: qdevId }).catch(() => undefined);
  await qmp.execute(frontend, 'blockdev-del', { 'node-name': genericNodeName(qdevId) }).catch(() => undefined);
  await qmp.execute(frontend, 'object-del', { id: qdevId }).catch(() => undefined);
}
