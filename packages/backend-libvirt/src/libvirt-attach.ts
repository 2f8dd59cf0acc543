/**
 * How devgate attachments look inside libvirt. Every device devgate attaches carries a user alias
 * (`ua-dg-` + base64url of class, backend and port: libvirt keeps `ua-` aliases of `[A-Za-z0-9_-]`
 * and refuses a duplicate), and an entry in the domain's metadata (namespace `urn:devgate:1`) with
 * the device id, the backend and the options. The alias alone says "devgate's, and which port";
 * the metadata adds who it is. Devices without a devgate alias are never devgate's.
 */
import { type AttachSpec, DriverContractError, Errors, type Port } from '@devgate/core';
import { type DomainDisk, type DomainHostdev, type DomainXml, xmlEscape } from './parse-domain-xml.js';

const PREFIX = 'ua-dg-';

export function aliasFor(port: Port): string {
  const fields = [port.devclass, port.backend, port.portId].join('\t');
  return PREFIX + Buffer.from(fields, 'utf8').toString('base64url');
}

/** The port an alias names, or undefined for an alias devgate did not make. */
export function portOfAlias(alias: string): Port | undefined {
  if (!alias.startsWith(PREFIX) || !/^[A-Za-z0-9_-]+$/.test(alias.slice(PREFIX.length))) return undefined;
  const [devclass, backend, portId, ...rest] = Buffer.from(alias.slice(PREFIX.length), 'base64url')
    .toString('utf8')
    .split('\t');
  if (!devclass || !backend || !portId || rest.length > 0) return undefined;
  const port = { devclass, backend, portId };
  // Only canonical encodings: another text that decodes the same is not devgate's alias.
  return aliasFor(port) === alias ? port : undefined;
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
  readonly alias: string;
  readonly xml: string;
  readonly options: Readonly<Record<string, string>>;
  /** The device as the domain's XML will show it (for the connector's cache). */
  readonly disk?: DomainDisk;
  readonly hostdev?: DomainHostdev;
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
