import { type AttachSpec, type DomainName, Errors, type HypervisorAttachment, type Port } from '@devgate/core';

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
  /** options reported in USED BY, in order */
  readonly o: Readonly<Record<string, string>>;
}

const PREFIX = 'dg-';
const SEPARATOR = '\t';

export function encodeQdevId(record: AttachmentRecord): string {
  const fields = [record.c, record.b, record.p, ...Object.entries(record.o).map(([k, v]) => `${k}=${v}`)];
  return PREFIX + Buffer.from(fields.join(SEPARATOR), 'utf8').toString('base64url');
}

export function decodeQdevId(id: string): AttachmentRecord | undefined {
  if (!id.startsWith(PREFIX) || !/^[A-Za-z0-9_-]+$/.test(id.slice(PREFIX.length))) return undefined;
  const [c, b, p, ...options] = Buffer.from(id.slice(PREFIX.length), 'base64url').toString('utf8').split(SEPARATOR);
  if (!c || !b || !p) return undefined;
  const o: Record<string, string> = {};
  for (const option of options) {
    const eq = option.indexOf('=');
    if (eq <= 0) return undefined;
    o[option.slice(0, eq)] = option.slice(eq + 1);
  }
  return { c, b, p, o };
}

export function toHypervisorAttachment(frontend: DomainName, record: AttachmentRecord): HypervisorAttachment {
  return { port: { devclass: record.c, backend: record.b, portId: record.p }, frontend, options: record.o };
}

/**
 * Qubes' frontend names, in Qubes' order: xvdi..xvdz, then xvdaa..xvdzz, then xvda..xvdh last
 * (reserved for system volumes in Qubes).
 */
export function* frontendNames(): Generator<string> {
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  for (const c of letters.slice(letters.indexOf('i'))) yield `xvd${c}`;
  for (const a of letters) for (const b of letters) yield `xvd${a}${b}`;
  for (const c of letters.slice(0, letters.indexOf('h') + 1)) yield `xvd${c}`;
}

/** The frontend name for a new block attachment: the one asked for, xvdd for a CD, else the first free. */
export function chooseFrontendDev(domain: DomainName, spec: AttachSpec, used: ReadonlySet<string>): string {
  const asked = spec.params.frontendDev;
  if (typeof asked === 'string') {
    if (used.has(asked)) throw Errors.frontendDevInUse({ domain, dev: asked });
    return asked;
  }
  if (spec.params.devtype === 'cdrom' && !used.has('xvdd')) return 'xvdd';
  for (const name of frontendNames()) if (!used.has(name)) return name;
  throw Errors.noFreeFrontend({ domain, what: 'block frontend name' });
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

export function planBlockAttach(port: Port, spec: AttachSpec, frontendDev: string, freeRootPort?: string): BlockPlan {
  const readOnly = spec.params.readOnly === true;
  const options: Record<string, string> = { ...spec.options, 'frontend-dev': frontendDev };
  // Qubes lists read-only first: `read-only=no, frontend-dev=xvdi`.
  const ordered = { 'read-only': options['read-only'], ...options };
  const qdevId = encodeQdevId({ c: port.devclass, b: port.backend, p: port.portId, o: ordered });
  // Node names are limited to 31 characters; the frontend name is unique within the domain.
  const nodeName = `dg-${frontendDev}`;
  const blockdev = {
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
