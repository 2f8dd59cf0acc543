/**
 * The emulated devices of lab guests: what a guest gets at boot (-device/-blockdev/-chardev) and
 * what is plugged into and pulled out of a running guest over QMP. Every lab device is on the xHCI
 * controller (`xhci.0`) and has a short qdev id (`kbd1`, `stick2`, ...); the QEMU names of its
 * backing parts derive from that id (`<id>-drive` for a stick's block node, `<id>-chr` for a serial
 * adapter's chardev), so a device plugged by one process can be pulled by another.
 *
 *   kind        QEMU device  in the guest
 *   usb-kbd     usb-kbd      0627:0001 QEMU USB Keyboard, usbhid, /dev/input/event*
 *   usb-mouse   usb-mouse    0627:0001 QEMU USB Mouse
 *   usb-tablet  usb-tablet   0627:0001 QEMU USB Tablet
 *   usb-storage usb-storage  46f4:0001 QEMU USB HARDDRIVE, usb-storage, /dev/sdX (an image file)
 *   usb-serial  usb-serial   0403:6001 QEMU USB SERIAL, ftdi_sio, /dev/ttyUSB* (a ring buffer chardev)
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type QmpClient, isQmpCommandError } from '@devgate/backend-qemu';
import { compareNatural } from '@devgate/core';
import { GuestErrors } from './guest-errors.js';

export const DEVICE_KINDS = ['usb-kbd', 'usb-mouse', 'usb-tablet', 'usb-storage', 'usb-serial'] as const;
export type DeviceKind = (typeof DEVICE_KINDS)[number];

export interface DeviceSpec {
  readonly kind: DeviceKind;
  /** The qdev id; default: the kind's short name and the first free number (`kbd1`). */
  readonly id?: string;
  /** usb-storage: the image file. Default: a blank 64 MiB image in the guest's directory. */
  readonly image?: string;
  /** usb-storage: the guest cannot write to it. */
  readonly readOnly?: boolean;
  /** usb-storage: writes go to a qcow2 overlay in the guest's directory; the image stays as it was. */
  readonly overlay?: boolean;
  /** usb-storage: the disk's serial number. */
  readonly serial?: string;
}

export interface LabDevice {
  readonly id: string;
  readonly kind: DeviceKind;
}

const SHORT: Record<DeviceKind, string> = {
  'usb-kbd': 'kbd',
  'usb-mouse': 'mouse',
  'usb-tablet': 'tablet',
  'usb-storage': 'stick',
  'usb-serial': 'serial',
};
const ID = /^[a-zA-Z][a-zA-Z0-9_-]{0,20}$/;
const BLANK_STICK_MIB = 64;

export function isDeviceKind(kind: string): kind is DeviceKind {
  return (DEVICE_KINDS as readonly string[]).includes(kind);
}

/** `usb-kbd`, `usb-storage=/path/img`, `usb-storage=/path/img:ro` (the CLI's --device form). */
export function parseDeviceSpec(text: string): DeviceSpec {
  const eq = text.indexOf('=');
  const kind = eq < 0 ? text : text.slice(0, eq);
  if (!isDeviceKind(kind)) throw GuestErrors.badDevice({ spec: text, reason: `unknown kind '${kind}'` });
  if (eq < 0) return { kind };
  if (kind !== 'usb-storage') throw GuestErrors.badDevice({ spec: text, reason: 'only usb-storage takes an image' });
  let image = text.slice(eq + 1);
  const readOnly = image.endsWith(':ro');
  if (readOnly) image = image.slice(0, -3);
  return { kind, image: path.resolve(image), readOnly };
}

/** The first free id for a kind: its short name and the lowest number not taken. */
export function nextDeviceId(kind: DeviceKind, taken: Iterable<string>): string {
  const used = new Set(taken);
  for (let n = 1; ; n++) if (!used.has(`${SHORT[kind]}${n}`)) return `${SHORT[kind]}${n}`;
}

function checkSpec(spec: DeviceSpec, id: string): void {
  if (!ID.test(id) || id.startsWith('dg-')) {
    throw GuestErrors.badDevice({ spec: id, reason: 'an id is a letter, then up to 20 of [a-zA-Z0-9_-], not dg-*' });
  }
  if (spec.kind !== 'usb-storage' && (spec.image || spec.readOnly || spec.overlay || spec.serial)) {
    throw GuestErrors.badDevice({
      spec: spec.kind,
      reason: 'image, read-only, overlay and serial are for usb-storage',
    });
  }
  if (spec.image && !fs.existsSync(spec.image)) {
    throw GuestErrors.badDevice({ spec: spec.image, reason: 'no such image file' });
  }
}

interface Plan {
  readonly blockdev?: Record<string, unknown>;
  readonly chardev?: { readonly id: string; readonly size: number };
  readonly device: Record<string, unknown>;
}

/** Creates what a device needs on disk (a blank image, an overlay) and says what QEMU gets. */
function plan(spec: DeviceSpec, id: string, dir: string): Plan {
  checkSpec(spec, id);
  const device: Record<string, unknown> = { driver: spec.kind, id, bus: 'xhci.0' };
  if (spec.kind === 'usb-serial') {
    // A ring buffer is always "connected": the adapter appears at once (a socket chardev would hold
    // it back until a client connects). QMP ringbuf-read/-write reach its other end.
    return { chardev: { id: `${id}-chr`, size: 65536 }, device: { ...device, chardev: `${id}-chr` } };
  }
  if (spec.kind !== 'usb-storage') return { device };
  let image = spec.image;
  if (!image) {
    image = path.join(dir, `${id}.img`);
    fs.writeFileSync(image, '');
    fs.truncateSync(image, BLANK_STICK_MIB * 1024 * 1024);
  }
  const file = { driver: 'file', filename: image, 'read-only': Boolean(spec.readOnly) || Boolean(spec.overlay) };
  let blockdev: Record<string, unknown> = { driver: 'raw', 'node-name': `${id}-drive`, file };
  if (spec.overlay) {
    const overlay = path.join(dir, `${id}.qcow2`);
    const format = imageFormat(image);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', format, '-b', image, overlay]);
    blockdev = {
      driver: 'qcow2',
      'node-name': `${id}-drive`,
      file: { driver: 'file', filename: overlay },
      backing: { driver: format, file },
    };
  }
  blockdev['read-only'] = Boolean(spec.readOnly);
  return {
    blockdev,
    device: { ...device, drive: `${id}-drive`, removable: true, ...(spec.serial ? { serial: spec.serial } : {}) },
  };
}

function imageFormat(image: string): string {
  try {
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', image], { encoding: 'utf8' }));
    return typeof info.format === 'string' ? info.format : 'raw';
  } catch {
    return 'raw';
  }
}

/** QEMU arguments for devices present from power-on. Returns the ids given, in order. */
export function bootDeviceArgs(specs: readonly DeviceSpec[], dir: string): { args: string[]; devices: LabDevice[] } {
  const args: string[] = [];
  const devices: LabDevice[] = [];
  for (const spec of specs) {
    const id =
      spec.id ??
      nextDeviceId(
        spec.kind,
        devices.map((d) => d.id),
      );
    if (devices.some((d) => d.id === id)) throw GuestErrors.badDevice({ spec: id, reason: 'the id is taken' });
    const p = plan(spec, id, dir);
    if (p.blockdev) args.push('-blockdev', JSON.stringify(p.blockdev));
    if (p.chardev) args.push('-chardev', `ringbuf,id=${p.chardev.id},size=${p.chardev.size}`);
    args.push('-device', JSON.stringify(p.device));
    devices.push({ id, kind: spec.kind });
  }
  return { args, devices };
}

/** The lab's devices in a running guest (everything on /machine/peripheral of a lab kind, but devgate's `dg-*`). */
export async function listLabDevices(qmp: QmpClient): Promise<LabDevice[]> {
  const children = await qmp.execute<{ name: string; type: string }[]>('qom-list', { path: '/machine/peripheral' });
  const devices: LabDevice[] = [];
  for (const child of children) {
    const kind = /^child<(.+)>$/.exec(child.type)?.[1];
    if (kind && isDeviceKind(kind) && !child.name.startsWith('dg-')) devices.push({ id: child.name, kind });
  }
  return devices.sort((a, b) => compareNatural(a.id, b.id));
}

/** Plugs a device into a running guest ("plugging it in"); returns its id. */
export async function plugDevice(qmp: QmpClient, spec: DeviceSpec, dir: string): Promise<string> {
  const taken = (await qmp.execute<{ name: string }[]>('qom-list', { path: '/machine/peripheral' })).map((c) => c.name);
  const id = spec.id ?? nextDeviceId(spec.kind, taken);
  if (taken.includes(id)) throw GuestErrors.badDevice({ spec: id, reason: 'the id is taken' });
  const p = plan(spec, id, dir);
  if (p.chardev) {
    await qmp.execute('chardev-add', {
      id: p.chardev.id,
      backend: { type: 'ringbuf', data: { size: p.chardev.size } },
    });
  }
  try {
    if (p.blockdev) await qmp.execute('blockdev-add', p.blockdev);
    try {
      await qmp.execute('device_add', p.device);
    } catch (error) {
      if (p.blockdev) await qmp.execute('blockdev-del', { 'node-name': `${id}-drive` }).catch(() => undefined);
      throw error;
    }
  } catch (error) {
    if (p.chardev) await qmp.execute('chardev-remove', { id: p.chardev.id }).catch(() => undefined);
    removeOwnFiles(dir, id);
    throw error;
  }
  return id;
}

/**
 * Pulls a device out ("pulling it out"): `device_del`, QEMU's DEVICE_DELETED, then its block node
 * or chardev go, and any image the lab made for it. `idOrKind` is an id, or a kind when the guest
 * has exactly one lab device of that kind.
 */
export async function unplugDevice(
  qmp: QmpClient,
  idOrKind: string,
  dir: string,
  guestName: string,
  timeoutMs = 10_000,
): Promise<string> {
  const devices = await listLabDevices(qmp);
  let device = devices.find((d) => d.id === idOrKind);
  if (!device && isDeviceKind(idOrKind)) {
    const ofKind = devices.filter((d) => d.kind === idOrKind);
    if (ofKind.length > 1)
      throw GuestErrors.ambiguousDevice({ name: guestName, kind: idOrKind, ids: ofKind.map((d) => d.id) });
    device = ofKind[0];
  }
  if (!device) throw GuestErrors.noSuchDevice({ name: guestName, device: idOrKind, known: devices.map((d) => d.id) });
  const id = device.id;
  // Listen before asking: a USB unplug completes within milliseconds.
  const deleted = qmp.waitForEvent('DEVICE_DELETED', (e) => (e.data as { device?: string })?.device === id, timeoutMs);
  deleted.catch(() => undefined);
  await qmp.execute('device_del', { id });
  await deleted;
  if (device.kind === 'usb-storage') await ignoreMissing(qmp.execute('blockdev-del', { 'node-name': `${id}-drive` }));
  if (device.kind === 'usb-serial') await ignoreMissing(qmp.execute('chardev-remove', { id: `${id}-chr` }));
  removeOwnFiles(dir, id);
  return id;
}

/** What a serial adapter's guest side has written (QMP ringbuf-read), and writing to it. */
export async function serialRead(qmp: QmpClient, id: string): Promise<string> {
  return qmp.execute<string>('ringbuf-read', { device: `${id}-chr`, size: 65536, format: 'utf8' });
}

export async function serialWrite(qmp: QmpClient, id: string, data: string): Promise<void> {
  await qmp.execute('ringbuf-write', { device: `${id}-chr`, data, format: 'utf8' });
}

async function ignoreMissing(command: Promise<unknown>): Promise<void> {
  try {
    await command;
  } catch (error) {
    if (!isQmpCommandError(error)) throw error;
  }
}

function removeOwnFiles(dir: string, id: string): void {
  for (const suffix of ['.img', '.qcow2']) fs.rmSync(path.join(dir, id + suffix), { force: true });
}
