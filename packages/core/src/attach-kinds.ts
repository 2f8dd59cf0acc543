/**
 * The generic attach kinds: how a driver hands a device to a hypervisor without a connector that
 * knows its class. A driver builds the spec with `qemuDeviceSpec` or `libvirtXmlSpec`; the backend's
 * data path fills in the device's host node (found by its major:minor, never by a name); the
 * connector checks the spec again and performs it. A driver never writes a host path: the only path
 * in a generic spec is the one the data path put there, as `path`.
 *
 *   qemu-device   device_add of a named QEMU device with properties, after an optional chardev,
 *                 block node or QOM object that it is linked to (QEMU connector)
 *   libvirt-xml   a device XML fragment with `{path}` where the host node goes (libvirt connector)
 *
 * @since 1
 */
import { type AttachSpec } from './plugin-api.js';

export const QEMU_DEVICE_KIND = 'qemu-device';
export const LIBVIRT_XML_KIND = 'libvirt-xml';

export type HostNodeType = 'char' | 'block';

/** What a `qemu-device` attach does. */
export interface QemuDeviceRequest {
  /** The QEMU device type: `usb-serial`, `virtio-rng-pci`, ... */
  readonly device: string;
  /** Its properties; `id`, `bus`, `chardev`, `drive` and the object link are the connector's. */
  readonly properties?: Readonly<Record<string, string | number | boolean>>;
  /** A character device first, the device's `chardev`: `serial` opens the host node; `null`, `ringbuf` none. */
  readonly chardev?: 'serial' | 'null' | 'ringbuf';
  /** A block node of the host node first, the device's `drive`. */
  readonly blockdev?: { readonly readOnly: boolean };
  /** A QOM object first, named by the device property `link`: `rng-random` reads the host node. */
  readonly object?: { readonly type: 'rng-random' | 'rng-builtin'; readonly link: string };
  /** The device's node in its backend, which the data path finds by major:minor and checks. */
  readonly hostNode?: HostNodeType;
}

/** A checked `qemu-device` spec, with the path the data path filled in. */
export interface QemuDevicePlan extends QemuDeviceRequest {
  readonly path?: string;
}

const QEMU_NAME = /^[a-z][a-z0-9_.-]{0,63}$/;
const RESERVED_PROPERTIES = new Set(['id', 'bus', 'chardev', 'drive']);
const CHARDEVS = new Set(['serial', 'null', 'ringbuf']);
const OBJECTS = new Set(['rng-random', 'rng-builtin']);
/** Backends whose chardev, block node or object opens the host node. */
const NEEDS_NODE = { chardev: new Set(['serial']), object: new Set(['rng-random']) };

/** The spec a driver returns for a `qemu-device` attach. */
export function qemuDeviceSpec(request: QemuDeviceRequest, options: Readonly<Record<string, string>>): AttachSpec {
  const params: Record<string, string | number | boolean> = { device: request.device };
  for (const [name, value] of Object.entries(request.properties ?? {})) params[`prop.${name}`] = value;
  if (request.chardev) params.chardev = request.chardev;
  if (request.blockdev) {
    params.blockdev = 'host_device';
    params['blockdev.read-only'] = request.blockdev.readOnly;
  }
  if (request.object) {
    params.object = request.object.type;
    params['object.link'] = request.object.link;
  }
  if (request.hostNode) params.hostNode = request.hostNode;
  return { kind: QEMU_DEVICE_KIND, params, options: { ...options } };
}

/**
 * Checks a `qemu-device` spec's parameters, as the connector and the conformance kit do. Returns
 * the plan, or what is wrong with it. `filled` says whether the data path has run (so `path` must
 * be there exactly when a host node was asked for) or not (so no `path` at all).
 */
export function checkQemuDeviceParams(
  params: AttachSpec['params'],
  filled: boolean,
): { plan?: QemuDevicePlan; problem?: string } {
  const problem = (text: string) => ({ problem: text });
  const device = params.device;
  if (typeof device !== 'string' || !QEMU_NAME.test(device)) return problem('device must name a QEMU device type');
  const properties: Record<string, string | number | boolean> = {};
  let chardev: QemuDeviceRequest['chardev'];
  let blockdev: QemuDeviceRequest['blockdev'];
  let object: { type?: string; link?: string } | undefined;
  let hostNode: HostNodeType | undefined;
  let nodePath: string | undefined;
  for (const [key, value] of Object.entries(params)) {
    if (key === 'device') continue;
    if (key.startsWith('prop.')) {
      const name = key.slice('prop.'.length);
      if (!QEMU_NAME.test(name) || RESERVED_PROPERTIES.has(name)) return problem(`property '${name}' is not allowed`);
      if (typeof value === 'string' && !/^[\w.:+-]{0,128}$/.test(value)) {
        return problem(`property '${name}' must be a plain word (no paths, no spaces)`);
      }
      properties[name] = value;
    } else if (key === 'chardev') {
      if (typeof value !== 'string' || !CHARDEVS.has(value))
        return problem(`chardev must be one of ${[...CHARDEVS].join(', ')}`);
      chardev = value as QemuDeviceRequest['chardev'];
    } else if (key === 'blockdev') {
      if (value !== 'host_device') return problem('blockdev must be host_device');
      blockdev = { readOnly: params['blockdev.read-only'] === true };
    } else if (key === 'blockdev.read-only') {
      if (typeof value !== 'boolean') return problem('blockdev.read-only must be true or false');
    } else if (key === 'object') {
      if (typeof value !== 'string' || !OBJECTS.has(value))
        return problem(`object must be one of ${[...OBJECTS].join(', ')}`);
      object = { ...object, type: value };
    } else if (key === 'object.link') {
      if (typeof value !== 'string' || !QEMU_NAME.test(value) || RESERVED_PROPERTIES.has(value)) {
        return problem('object.link must name a device property');
      }
      object = { ...object, link: value };
    } else if (key === 'hostNode') {
      if (value !== 'char' && value !== 'block') return problem("hostNode must be 'char' or 'block'");
      hostNode = value;
    } else if (key === 'path') {
      if (!filled) return problem('path is the backend’s to fill in (a driver never builds a host path)');
      if (typeof value !== 'string' || !/^\/[^\s,]{1,255}$/.test(value) || value.split('/').includes('..')) {
        return problem('path must be an absolute node path');
      }
      nodePath = value;
    } else {
      return problem(`unknown parameter '${key}'`);
    }
  }
  if (object && (!object.type || !object.link)) return problem('object needs both object and object.link');
  const opensNode =
    (chardev !== undefined && NEEDS_NODE.chardev.has(chardev)) ||
    blockdev !== undefined ||
    (object?.type !== undefined && NEEDS_NODE.object.has(object.type));
  if (opensNode && hostNode === undefined) return problem('a serial chardev, a blockdev or rng-random needs hostNode');
  if (blockdev && hostNode !== 'block') return problem("a blockdev needs hostNode 'block'");
  if (filled && hostNode !== undefined && nodePath === undefined)
    return problem('the data path gave no path for hostNode');
  return {
    plan: {
      device,
      properties,
      ...(chardev ? { chardev } : {}),
      ...(blockdev ? { blockdev } : {}),
      ...(object ? { object: object as QemuDeviceRequest['object'] } : {}),
      ...(hostNode ? { hostNode } : {}),
      ...(nodePath ? { path: nodePath } : {}),
    },
  };
}

/** The spec a driver returns for a `libvirt-xml` attach: one device element, `{path}` for the node. */
export function libvirtXmlSpec(
  xml: string,
  hostNode: HostNodeType | undefined,
  options: Readonly<Record<string, string>>,
): AttachSpec {
  return { kind: LIBVIRT_XML_KIND, params: { xml, ...(hostNode ? { hostNode } : {}) }, options: { ...options } };
}
