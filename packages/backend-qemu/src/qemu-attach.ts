import {
  type AttachSpec,
  type DomainName,
  DriverContractError,
  Errors,
  type HypervisorAttachment,
  type Port,
} from '@devgate/core';

/**
 * How devgate attachments look inside QEMU. Every device devgate adds has a qdev id that carries
 * the attachment itself, so `attachments()` reads the truth back from QEMU after any restart:
 * nothing is kept only in devgate's memory. The id is `dg-` + base64url of the fields joined by
 * tabs: QEMU accepts that alphabet in ids, and it is short (device_add slows with long ids).
 */
export interface AttachmentRecord {
  /** devclass, backend, port id */
  readonly c: string;
  readonly b: string;
  readonly p: string;
  /** the identity of the device attached: a read-back tells another device in the same port */
  readonly d?: string;
  /** the attach kind, for kinds whose detach removes more than the device (`qemu-device`) */
  readonly k?: string;
  /** options reported in USED BY, in order */
  readonly o: Readonly<Record<string, string>>;
}

const PREFIX = 'dg-';
const SEPARATOR = '\t';
/** Marks the identity field; options never start with it (their names are lowercase words). */
const IDENTITY = '#';
/** Marks the kind field, after the identity. */
const KIND = '!';

export function encodeQdevId(record: AttachmentRecord): string {
  const fields = [
    record.c,
    record.b,
    record.p,
    ...(record.d === undefined ? [] : [IDENTITY + record.d]),
    ...(record.k === undefined ? [] : [KIND + record.k]),
    ...Object.entries(record.o).map(([k, v]) => `${k}=${v}`),
  ];
  return PREFIX + Buffer.from(fields.join(SEPARATOR), 'utf8').toString('base64url');
}

export function decodeQdevId(id: string): AttachmentRecord | undefined {
  if (!id.startsWith(PREFIX) || !/^[A-Za-z0-9_-]+$/.test(id.slice(PREFIX.length))) return undefined;
  const [c, b, p, ...rest] = Buffer.from(id.slice(PREFIX.length), 'base64url').toString('utf8').split(SEPARATOR);
  if (!c || !b || !p) return undefined;
  const d = rest[0]?.startsWith(IDENTITY) ? rest.shift()!.slice(IDENTITY.length) : undefined;
  const k = rest[0]?.startsWith(KIND) ? rest.shift()!.slice(KIND.length) : undefined;
  const options = rest;
  const o: Record<string, string> = {};
  for (const option of options) {
    const eq = option.indexOf('=');
    if (eq <= 0) return undefined;
    o[option.slice(0, eq)] = option.slice(eq + 1);
  }
  return { c, b, p, ...(d === undefined ? {} : { d }), ...(k === undefined ? {} : { k }), o };
}

export function toHypervisorAttachment(frontend: DomainName, record: AttachmentRecord): HypervisorAttachment {
  const port = { devclass: record.c, backend: record.b, portId: record.p };
  return { port, frontend, ...(record.d === undefined ? {} : { deviceId: record.d }), options: record.o };
}

/** The USB transport of a CD attachment; unplugging it takes the CD with it. */
export function cdTransportId(frontendDev: string): string {
  return `dg-bot-${frontendDev}`;
}

/** The QMP commands that attach a block device, and those that undo them, in order. */
export interface BlockPlan {
  readonly qdevId: string;
  readonly nodeName: string;
  readonly blockdev: Record<string, unknown>;
  readonly devices: readonly Record<string, unknown>[];
  readonly options: Readonly<Record<string, string>>;
}

export function planBlockAttach(
  port: Port,
  spec: AttachSpec,
  deviceId: string,
  frontendDev: string,
  freeRootPort?: string,
): BlockPlan {
  const readOnly = spec.params.readOnly === true;
  const options: Record<string, string> = { ...spec.options, 'frontend-dev': frontendDev };
  // Qubes lists read-only first: `read-only=no, frontend-dev=xvdi`.
  const ordered = { 'read-only': options['read-only'], ...options };
  const qdevId = encodeQdevId({ c: port.devclass, b: port.backend, p: port.portId, d: deviceId, o: ordered });
  // Node names are limited to 31 characters; the frontend name is unique within the domain.
  const nodeName = `dg-${frontendDev}`;
  // A backend VM's device comes as an NBD export its agent serves on a port of the VM (the host's
  // kernel never sees it); this host's own device is its node.
  const blockdev =
    typeof spec.params.nbdSocket === 'string'
      ? {
          driver: 'nbd',
          'node-name': nodeName,
          server: { type: 'unix', path: spec.params.nbdSocket },
          export: String(spec.params.nbdExport ?? ''),
          'read-only': readOnly,
        }
      : {
          driver: 'host_device',
          'node-name': nodeName,
          filename: String(spec.params.path),
          'read-only': readOnly,
        };
  let devices: Record<string, unknown>[];
  if (spec.params.bus === 'virtio') {
    if (!freeRootPort) throw Errors.noFreeFrontend({ domain: 'the frontend', what: 'PCIe root port' });
    devices = [{ driver: 'virtio-blk-pci', id: qdevId, drive: nodeName, bus: freeRootPort }];
  } else if (spec.params.devtype === 'cdrom') {
    // A USB CD drive: a bulk-only transport with a SCSI CD behind it. QEMU truncates long bus
    // names, so the transport gets a short id and the CD carries the attachment record.
    const transport = cdTransportId(frontendDev);
    devices = [
      { driver: 'usb-bot', id: transport, bus: 'xhci.0' },
      { driver: 'scsi-cd', id: qdevId, drive: nodeName, bus: `${transport}.0` },
    ];
  } else {
    // What a USB stick is: usb-storage on the xHCI controller.
    devices = [{ driver: 'usb-storage', id: qdevId, drive: nodeName, bus: 'xhci.0', removable: true }];
  }
  return { qdevId, nodeName, blockdev, devices, options: ordered };
}

/** The QMP `device_add` that passes a host USB device through, on the xHCI controller. */
export interface UsbHostPlan {
  readonly qdevId: string;
  readonly device: Record<string, unknown>;
  readonly options: Readonly<Record<string, string>>;
}

const HOST_PORT = /^\d{1,3}(\.\d{1,3}){0,6}$/;

/**
 * `usb-host` by physical port (`hostbus` + `hostport`, QEMU's "any device in that port") or by id
 * (`vendorid` + `productid`, "this device whenever it shows up"). QEMU reads 0 as a wildcard in
 * every one of these, so zeros are refused: a spec must name one device. The qdev id carries the
 * attachment, as for block devices, so the attachment is read back from QEMU.
 */
export function planUsbHostAttach(port: Port, spec: AttachSpec, deviceId: string): UsbHostPlan {
  const { hostbus, hostport, vendorid, productid } = spec.params;
  const isId = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v > 0 && v <= 0xffff;
  let selector: Record<string, number | string>;
  if (vendorid !== undefined || productid !== undefined) {
    if (!isId(vendorid) || !isId(productid) || hostbus !== undefined || hostport !== undefined) {
      throw new DriverContractError(port.devclass, 'usb-host by id needs vendorid and productid (1 to 0xffff) only');
    }
    selector = { vendorid: vendorid as number, productid: productid as number };
  } else {
    const busOk = typeof hostbus === 'number' && Number.isInteger(hostbus) && hostbus > 0 && hostbus < 1000;
    if (!busOk || typeof hostport !== 'string' || !HOST_PORT.test(hostport)) {
      throw new DriverContractError(port.devclass, 'usb-host needs hostbus (a bus number) and hostport (like 1.4)');
    }
    selector = { hostbus, hostport };
  }
  const options = { ...spec.options };
  const qdevId = encodeQdevId({ c: port.devclass, b: port.backend, p: port.portId, d: deviceId, o: options });
  return { qdevId, device: { driver: 'usb-host', id: qdevId, bus: 'xhci.0', ...selector }, options };
}

/** The QMP commands that attach a USB device of a backend VM through usbredir: a chardev, then usb-redir. */
export interface UsbRedirPlan {
  readonly qdevId: string;
  /** chardev-add's arguments; its id is the device's (chardevs and devices are separate namespaces). */
  readonly chardev: Record<string, unknown>;
  readonly device: Record<string, unknown>;
  readonly options: Readonly<Record<string, string>>;
}

/**
 * `usb-redir` on the xHCI controller, fed by a chardev connected to the export port of the backend
 * VM (`socket`). The frontend's QEMU speaks usbredir itself: the frontend needs no software. Its
 * filter lets through only the vendor and product that were listed, whatever the backend presents.
 */
export function planUsbRedirAttach(port: Port, spec: AttachSpec, deviceId: string): UsbRedirPlan {
  const { socket, vendorid, productid } = spec.params;
  const isId = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v > 0 && v <= 0xffff;
  if (typeof socket !== 'string' || !socket.startsWith('/') || !isId(vendorid) || !isId(productid)) {
    throw new DriverContractError(port.devclass, 'usb-redir needs socket (an absolute path), vendorid and productid');
  }
  const hex = (n: number) => `0x${n.toString(16).padStart(4, '0')}`;
  const options = { ...spec.options };
  const qdevId = encodeQdevId({ c: port.devclass, b: port.backend, p: port.portId, d: deviceId, o: options });
  return {
    qdevId,
    chardev: {
      id: qdevId,
      backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: socket } }, server: false } },
    },
    device: {
      driver: 'usb-redir',
      id: qdevId,
      chardev: qdevId,
      bus: 'xhci.0',
      filter: `-1:${hex(vendorid as number)}:${hex(productid as number)}:-1:1|-1:-1:-1:-1:0`,
    },
    options,
  };
}
