/**
 * Input devices in QEMU: one `input-linux` object per event node (QEMU `ui/input-linux.c`, evdev
 * passthrough with a grab-toggle hotkey), added and removed live with `object-add` / `object-del`.
 * QEMU opens the node and grabs it (EVIOCGRAB); deleting the object closes it and ends the grab.
 *
 * Objects are not devices: they live under `/objects`, not `/machine/peripheral`. Their ids carry the
 * attachment as devgate's qdev ids do (`dgi<N>-` + the same base64url record as `dg-`), so an
 * attachment is read back from QEMU after any restart, with the identity of the device attached.
 */
import {
  type AttachSpec,
  DriverContractError,
  type DomainName,
  type HypervisorAttachment,
  type Port,
  isGrabToggle,
} from '@devgate/core';
import { type AttachmentRecord, decodeQdevId, encodeQdevId, toHypervisorAttachment } from './qemu-attach.js';

/** `dgi<node>n<attach>-<record>`: the attach part keeps a new attach's ids apart from a late detach's. */
const OBJECT_ID = /^dgi(\d{1,3})(?:n[0-9a-z]{1,13})?-([A-Za-z0-9_-]+)$/;
let attaches = 0;
const EVDEV = /^\/[^,\s]*\/event\d{1,6}$/;

/** What the connector offers these helpers: QMP on a domain. */
export interface QmpExecutor {
  execute<T = unknown>(domain: DomainName, command: string, args?: Readonly<Record<string, unknown>>): Promise<T>;
}

export interface InputLinuxPlan {
  readonly objects: readonly Record<string, unknown>[];
  readonly options: Readonly<Record<string, string>>;
}

/** The `object-add` arguments for a filled-in spec (`evdev` is the nodes, from the backend's data path). */
export function planInputLinux(port: Port, spec: AttachSpec, deviceId: string): InputLinuxPlan {
  const evdev = String(spec.params.evdev ?? '').split(',');
  if (evdev.length === 0 || !evdev.every((node) => EVDEV.test(node)) || evdev.length > 32) {
    throw new DriverContractError(port.devclass, 'input-linux needs evdev: the event nodes, from the data path');
  }
  const grabToggle = String(spec.params.grabToggle ?? 'ctrl-ctrl');
  if (!isGrabToggle(grabToggle)) throw new DriverContractError(port.devclass, `grab-toggle ${grabToggle}`);
  const options = { ...spec.options };
  const payload = encodeQdevId({ c: port.devclass, b: port.backend, p: port.portId, d: deviceId, o: options }).slice(3);
  const nonce = `n${(Date.now() * 1000 + (attaches++ % 1000)).toString(36)}`;
  const objects = evdev.map((node, i) => ({
    'qom-type': 'input-linux',
    id: `dgi${i}${nonce}-${payload}`,
    evdev: node,
    grab_all: spec.params.grabAll === true,
    repeat: spec.params.repeat === true,
    'grab-toggle': grabToggle,
  }));
  return { objects, options };
}

/** The attachment an object id carries, and which of its nodes the object is. */
export function decodeInputObjectId(id: string): { index: number; record: AttachmentRecord } | undefined {
  const match = OBJECT_ID.exec(id);
  const record = match ? decodeQdevId(`dg-${match[2]}`) : undefined;
  return match && record ? { index: Number(match[1]), record } : undefined;
}

/** Adds every node's object; if one fails, removes those added, so the VM is left as it was. */
export async function attachInputLinux(
  qmp: QmpExecutor,
  frontend: DomainName,
  port: Port,
  spec: AttachSpec,
  deviceId: string,
): Promise<HypervisorAttachment> {
  const plan = planInputLinux(port, spec, deviceId);
  const added: string[] = [];
  try {
    for (const object of plan.objects) {
      await qmp.execute(frontend, 'object-add', object);
      added.push(String(object.id));
    }
  } catch (error) {
    for (const id of added.reverse()) await qmp.execute(frontend, 'object-del', { id }).catch(() => undefined);
    throw error;
  }
  return { port, frontend, deviceId, options: plan.options };
}

/** devgate's input-linux objects in a domain, by attachment. */
async function inputObjects(
  qmp: QmpExecutor,
  domain: DomainName,
): Promise<Map<string, { record: AttachmentRecord; ids: string[] }>> {
  const children = await qmp.execute<{ name: string; type: string }[]>(domain, 'qom-list', { path: '/objects' });
  const found = new Map<string, { record: AttachmentRecord; ids: string[] }>();
  for (const child of children) {
    const decoded = decodeInputObjectId(child.name);
    if (!decoded) continue;
    const key = child.name.slice(child.name.indexOf('-') + 1);
    const entry = found.get(key) ?? { record: decoded.record, ids: [] };
    entry.ids.push(child.name);
    found.set(key, entry);
  }
  return found;
}

/** The input attachments of a domain, read back from QEMU. */
export async function inputLinuxAttachments(qmp: QmpExecutor, domain: DomainName): Promise<HypervisorAttachment[]> {
  return [...(await inputObjects(qmp, domain)).values()].map(({ record }) => toHypervisorAttachment(domain, record));
}

/**
 * Deletes the objects of `port` (ending QEMU's grab of the nodes). False when the domain has none of
 * them, so the caller looks for devices instead.
 */
export async function detachInputLinux(qmp: QmpExecutor, frontend: DomainName, port: Port): Promise<boolean> {
  const matching = [...(await inputObjects(qmp, frontend)).values()].filter(
    ({ record }) => record.c === port.devclass && record.b === port.backend && record.p === port.portId,
  );
  if (matching.length === 0) return false;
  for (const { ids } of matching) for (const id of ids) await qmp.execute(frontend, 'object-del', { id });
  return true;
}
