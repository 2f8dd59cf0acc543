/**
 * How devgate attachments look inside libvirt. Every device devgate attaches carries a user alias
 * (`ua-dg-` + base64url of class, backend and port: libvirt keeps `ua-` aliases of `[A-Za-z0-9_-]`
 * and refuses a duplicate), and an entry in the domain's metadata (namespace `urn:devgate:1`) with
 * the device id, the backend and the options. The alias alone says "devgate's, and which port";
 * the metadata adds who it is. Devices without a devgate alias are never devgate's.
 */
import { type AttachSpec, DriverContractError, Errors, type Port, isGrabToggle } from '@devgate/core';
import {
  type DomainDisk,
  type DomainHostdev,
  type DomainInput,
  type DomainXml,
  xmlEscape,
} from './parse-domain-xml.js';

const PREFIX = 'ua-dg-';
/** Most event nodes one input device is passed through as (QEMU's connector takes as many). */
export const MAX_INPUT_NODES = 32;

/**
 * devgate's alias of a port's device. A device that is several libvirt devices (an input device's
 * event nodes, one `<input>` each) has one alias per part: part 0 is the port's alias, part N > 0
 * adds the index as a fourth field.
 */
export function aliasFor(port: Port, part = 0): string {
  const fields = [port.devclass, port.backend, port.portId, ...(part > 0 ? [String(part)] : [])].join('\t');
  return PREFIX + Buffer.from(fields, 'utf8').toString('base64url');
}

/** The port and part an alias names, or undefined for an alias devgate did not make. */
export function partOfAlias(alias: string): { port: Port; part: number } | undefined {
  if (!alias.startsWith(PREFIX) || !/^[A-Za-z0-9_-]+$/.test(alias.slice(PREFIX.length))) return undefined;
  const [devclass, backend, portId, index, ...rest] = Buffer.from(alias.slice(PREFIX.length), 'base64url')
    .toString('utf8')
    .split('\t');
  if (!devclass || !backend || !portId || rest.length > 0) return undefined;
  if (index !== undefined && !/^[1-9][0-9]?$/.test(index)) return undefined;
  const part = index === undefined ? 0 : Number(index);
  if (part >= MAX_INPUT_NODES) return undefined;
  const port = { devclass, backend, portId };
  // Only canonical encodings: another text that decodes the same is not devgate's alias.
  return aliasFor(port, part) === alias ? { port, part } : undefined;
}

/** The port an alias names (any of its parts), or undefined for an alias devgate did not make. */
export function portOfAlias(alias: string): Port | undefined {
  return partOfAlias(alias)?.port;
}

/** libvirt's target name: the first free `sdX` (USB) or `vdX` (virtio) in the domain. */
export function chooseTargetDev(domain: string, bus: string, disks: readonly DomainDisk[]): string {
  const prefix = bus === 'virtio' ? 'vd' : 'sd';
  const used = new Set(disks.map((d) => d.targetDev));
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  for (const a of ['', ...letters])
    for (const b of letters) if (!used.has(`${prefix}${a}${b}`)) return `${prefix}${a}${b}`;
  throw Errors.noFreeFrontend({ domain, what: `${prefix}* disk target` });
}

export interface DevicePlan {
  /** The port's alias (part 0), which its metadata entry names. */
  readonly alias: string;
  readonly xml: string;
  /** Further libvirt devices of the same attachment (parts 1..N), attached after the first. */
  readonly more?: readonly { readonly alias: string; readonly xml: string }[];
  readonly options: Readonly<Record<string, string>>;
  /** The device as the domain's XML will show it (for the connector's cache). */
  readonly disk?: DomainDisk;
  readonly hostdev?: DomainHostdev;
  readonly inputs?: readonly DomainInput[];
}

/** `<disk type='block'>`: a USB stick by default, virtio with bus=virtio, a CD with devtype=cdrom. */
export function planBlockDisk(port: Port, spec: AttachSpec, frontendDev: string, targetDev: string): DevicePlan {
  const path = spec.params.path;
  if (typeof path !== 'string' || !path.startsWith('/')) {
    throw new DriverContractError(port.devclass, 'a block attach needs an absolute host path from the backend');
  }
  const alias = aliasFor(port);
  const readOnly = spec.params.readOnly === true;
  const cdrom = spec.params.devtype === 'cdrom';
  const bus = spec.params.bus === 'virtio' ? 'virtio' : 'usb';
  const options: Record<string, string> = { ...spec.options, 'frontend-dev': frontendDev };
  // Qubes lists read-only first: `read-only=no, frontend-dev=xvdi`.
  const ordered = { 'read-only': options['read-only'], ...options };
  const xml = [
    `<disk type='block' device='${cdrom ? 'cdrom' : 'disk'}'>`,
    `<driver name='qemu' type='raw' cache='none' io='native'/>`,
    `<source dev='${xmlEscape(path)}'/>`,
    `<target dev='${targetDev}' bus='${bus}'${bus === 'usb' ? ` removable='on'` : ''}/>`,
    readOnly || cdrom ? '<readonly/>' : '',
    `<alias name='${alias}'/>`,
    '</disk>',
  ].join('');
  const disk: DomainDisk = {
    alias,
    type: 'block',
    device: cdrom ? 'cdrom' : 'disk',
    source: path,
    targetDev,
    targetBus: bus,
    readOnly: readOnly || cdrom,
  };
  return { alias, xml, options: ordered, disk };
}

/**
 * `<hostdev type='usb'>` by vendor/product (`vendorid` + `productid`) or by bus and device number:
 * libvirt addresses a host USB device by its device number, so a port (`hostbus` + `hostport`) is
 * turned into the device number there now by the caller (`devnum`).
 */
export function planUsbHostdev(port: Port, spec: AttachSpec, devnum?: number): DevicePlan {
  const alias = aliasFor(port);
  const { hostbus, vendorid, productid } = spec.params;
  const isId = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0 && v <= 0xffff;
  let source: string;
  if (vendorid !== undefined || productid !== undefined) {
    if (!isId(vendorid) || !isId(productid)) {
      throw new DriverContractError(port.devclass, 'usb-host by id needs vendorid and productid (1 to 0xffff)');
    }
    const hex = (v: number) => `0x${v.toString(16).padStart(4, '0')}`;
    source = `<vendor id='${hex(vendorid)}'/><product id='${hex(productid)}'/>`;
  } else {
    const busOk = typeof hostbus === 'number' && Number.isInteger(hostbus) && hostbus > 0 && hostbus < 1000;
    if (!busOk || devnum === undefined || !Number.isInteger(devnum) || devnum <= 0 || devnum >= 1000) {
      throw new DriverContractError(port.devclass, 'usb-host by port needs hostbus and the device number there');
    }
    source = `<address bus='${hostbus}' device='${devnum}'/>`;
  }
  const xml = `<hostdev mode='subsystem' type='usb' managed='no'><source>${source}</source><alias name='${alias}'/></hostdev>`;
  return { alias, xml, options: { ...spec.options }, hostdev: { alias, type: 'usb', missing: false } };
}

/** Whether the domain can take a USB device (a USB controller that is not `none`). */
export function hasUsbController(domain: DomainXml): boolean {
  return domain.controllers.some((c) => c.type === 'usb' && c.model !== 'none');
}

/** The attach kind of a PCI function on vfio-pci (driver-pci's VFIO_PCI_KIND). */
export const VFIO_PCI_KIND = 'vfio-pci';
/** The attach kind of an input device's event nodes (driver-input's spec, backend-qemu's input-linux). */

const SBDF = /^([0-9a-f]{4}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])$/;

/**
 * `<hostdev mode='subsystem' type='pci' managed='no'>` for a function the backend's data path has
 * already bound (with its whole IOMMU group) to vfio-pci: managed='no', so libvirt never rebinds it,
 * neither now nor at detach. No `<driver name=...>`: libvirt picks its hypervisor's own (vfio for
 * QEMU, xen for libxl).
 *
 * Options (driver-pci, Qubes' qvm-pci wording):
 *   permissive=True       `<source writeFiltering='no'>`, libvirt's form of it. libvirt's QEMU driver
 *                         refuses it ("Write filtering of PCI device configuration space is not
 *                         supported by qemu"), its Xen driver passes it on: libvirt decides, and its
 *                         refusal reaches the user as DG_LIBVIRT_REFUSED.
 *   no-strict-reset=True  libvirt's XML has no reset switch (Qubes patches libvirt for it): refused
 *                         here with DG_UNSUPPORTED_OPTION rather than silently dropped.
 */
export function planPciHostdev(port: Port, spec: AttachSpec): DevicePlan {
  const host = spec.params.host;
  const m = typeof host === 'string' ? SBDF.exec(host) : null;
  if (!m) throw new DriverContractError(port.devclass, 'vfio-pci needs host, an SBDF like 0000:00:14.0');
  const options = { ...spec.options };
  for (const [option, value] of Object.entries(options)) {
    if (option === 'permissive') {
      if (value !== 'True') throw new DriverContractError(port.devclass, `permissive=${value.slice(0, 40)}`);
    } else if (option === 'no-strict-reset') {
      throw Errors.unsupportedOption({
        option,
        message:
          'Unsupported option no-strict-reset for a libvirt domain: libvirt has no form for it ' +
          '(its <hostdev> has no reset switch), so devgate will not pretend to honour it',
      });
    } else {
      throw Errors.unsupportedOption({ option });
    }
  }
  const permissive = options.permissive === 'True' || spec.params.permissive === true;
  const alias = aliasFor(port);
  const [, domain, bus, slot, fn] = m;
  const xml =
    `<hostdev mode='subsystem' type='pci' managed='no'>` +
    `<source${permissive ? ` writeFiltering='no'` : ''}>` +
    `<address domain='0x${domain}' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/>` +
    `</source><alias name='${alias}'/></hostdev>`;
  return {
    alias,
    xml,
    options,
    hostdev: {
      alias,
      type: 'pci',
      domain: `0x${domain}`,
      bus: `0x${bus}`,
      slot: `0x${slot}`,
      function: `0x${fn}`,
      missing: false,
    },
  };
}

const EVDEV_NODE = /^\/[^,\s'"<>&]*\/event\d{1,6}$/;

/**
 * One `<input type='evdev'>` per event node (libvirt >= 7.4; QEMU's input-linux object underneath):
 * `<source dev='NODE' [grab='all'] grabToggle='...' repeat='on|off'/>`, each with its own alias (part
 * N of the port). `evdev` is the nodes the backend's data path checked, in order.
 *
 * libvirt up to at least 9.0 cannot hot-plug these ("input device on bus 'none' cannot be hot
 * plugged", libvirt issue #529): the attach is refused by libvirt with its reason, and nothing stays.
 */
export function planEvdevInputs(port: Port, spec: AttachSpec): DevicePlan {
  const nodes = String(spec.params.evdev ?? '').split(',');
  if (
    nodes.length > MAX_INPUT_NODES ||
    !nodes.every((node) => EVDEV_NODE.test(node) && !node.split('/').includes('..'))
  ) {
    throw new DriverContractError(port.devclass, 'input-linux needs evdev: the event nodes, from the data path');
  }
  const grabToggle = String(spec.params.grabToggle ?? 'ctrl-ctrl');
  if (!isGrabToggle(grabToggle)) {
    throw new DriverContractError(port.devclass, `grab-toggle ${grabToggle.slice(0, 40)}`);
  }
  const grabAll = spec.params.grabAll === true;
  const repeat = spec.params.repeat === true;
  const parts = nodes.map((node, i) => {
    const alias = aliasFor(port, i);
    const xml =
      `<input type='evdev'><source dev='${xmlEscape(node)}'${grabAll ? ` grab='all'` : ''}` +
      ` grabToggle='${grabToggle}' repeat='${repeat ? 'on' : 'off'}'/><alias name='${alias}'/></input>`;
    return { alias, xml };
  });
  return {
    alias: parts[0].alias,
    xml: parts[0].xml,
    more: parts.slice(1),
    options: { ...spec.options },
    inputs: nodes.map((node, i) => ({
      alias: parts[i].alias,
      type: 'evdev',
      dev: node,
      ...(grabAll ? { grab: 'all' } : {}),
      grabToggle,
      repeat: repeat ? 'on' : 'off',
    })),
  };
}
