/**
 * What the kernel checks of every device a driver lists, before it is diffed and listed. Drivers are
 * trusted code, but what they list is data: a third-party driver's mistake, or a backend VM's agent
 * behind any driver, must not list a device of another class or backend (which would shadow the real
 * one), an interface code nothing can match, or text that reaches a terminal as escape sequences.
 */
import { type DeviceInfo, type DomainName, type Port, portKey } from './device-model.js';
import { DriverContractError } from './errors.js';
import { isInterfaceCode } from './interfaces.js';
import { isSafeText, sanitizeText } from './sanitize.js';

export interface CheckedSnapshot {
  /** The devices that keep to the contract: the snapshot itself when all of them do. */
  readonly devices: readonly DeviceInfo[];
  /** What was wrong with each device left out, naming it. */
  readonly problems: readonly string[];
}

/** Longer strings than this are no device's text (the conformance kit's bound). */
const MAX_STRING = 4096;
const TEXT_FIELDS = [
  'vendor',
  'product',
  'manufacturer',
  'name',
  'serial',
  'legacyDescription',
  'hiddenReason',
] as const;
/** Problems named in a fault at most; the others are counted. */
const NAMED_PROBLEMS = 8;

/**
 * Checks the snapshots one driver lists for one backend. Each device object is checked once: a
 * hotplug pass hands back the same objects for the devices that did not change, so a pass costs a
 * lookup per device. Per driver and backend, as an object good for one is not for another.
 */
export function snapshotChecker(
  devclass: string,
  backend: DomainName,
  /**
   * Each good device's port key, filled here: the kernel's diff of the same snapshots reads it
   * (snapshotsToEvents), so 10,000 devices hold one key and one entry each, not two.
   */
  checked = new WeakMap<DeviceInfo, string>(),
): (snapshot: readonly DeviceInfo[]) => CheckedSnapshot {
  // The pass each port was last listed in, kept from pass to pass: a port met twice in one pass is
  // listed twice, and a pass makes no new set of every port.
  const listedIn = new Map<string, number>();
  let pass = 0;
  return (snapshot) => {
    if (!Array.isArray(snapshot))
      throw new DriverContractError(devclass, 'discover() emitted something that is not a list of devices');
    pass++;
    const problems: string[] = [];
    let devices: DeviceInfo[] | undefined; // made only when a device is left out
    let listed = 0;
    for (let i = 0; i < snapshot.length; i++) {
      const device: DeviceInfo = snapshot[i];
      let key = checked.get(device);
      let problem: string | undefined;
      if (key === undefined) {
        problem = deviceProblem(device, devclass, backend);
        if (problem === undefined) checked.set(device, (key = portKey(device.port)));
      }
      // Two devices in one port would collapse into one, whichever the diff saw last.
      if (key !== undefined && listedIn.get(key) === pass) problem = `${portText(device.port)} is listed twice`;
      if (problem !== undefined) {
        problems.push(problem);
        devices ??= snapshot.slice(0, i);
        continue;
      }
      listedIn.set(key!, pass);
      listed++;
      devices?.push(device);
    }
    // Ports no longer listed are forgotten, only when there are some (after a removal).
    if (listedIn.size > listed) for (const [key, last] of listedIn) if (last !== pass) listedIn.delete(key);
    return { devices: devices ?? snapshot, problems };
  };
}

/** The fault a driver's left-out devices make: one coded error that names the driver and each problem. */
export function invalidDevicesError(
  devclass: string,
  backend: DomainName,
  problems: readonly string[],
): DriverContractError {
  const named = problems.slice(0, NAMED_PROBLEMS).join('; ');
  const more = problems.length > NAMED_PROBLEMS ? ` and ${problems.length - NAMED_PROBLEMS} more` : '';
  const count = problems.length === 1 ? '1 device' : `${problems.length} devices`;
  return new DriverContractError(devclass, `${count} it listed for ${backend} left out: ${named}${more}`);
}

/** What is wrong with one device a driver listed for this class and backend, or undefined. */
function deviceProblem(device: DeviceInfo, devclass: string, backend: DomainName): string | undefined {
  if (typeof device !== 'object' || device === null) return 'an entry that is not a device';
  const { port } = device;
  if (!isPort(port)) return 'a device without a valid port';
  const label = portText(port);
  if (port.devclass !== devclass) return `${label} is of class ${inert(port.devclass)}, not ${devclass}`;
  if (port.backend !== backend) return `${label} is of backend ${inert(port.backend)}, not ${backend}`;
  // Qubes' BACKEND:PORT:DEVICE_ID arguments: a port id holds no ':'.
  if (port.portId === '' || /[\s:/]/.test(port.portId))
    return `${label} has a port id that is empty or holds a space, ':' or '/'`;
  if (device.deviceId === '' || !isSafeText(device.deviceId, MAX_STRING))
    return `${label} has no device id that is plain text`;
  if (!Array.isArray(device.interfaces)) return `${label} has no list of interfaces`;
  for (const code of device.interfaces as unknown[]) {
    if (typeof code !== 'string' || !isInterfaceCode(code))
      return `${label} has an invalid interface code ${quoted(code)}`;
  }
  // A parent ties the two into one resource: only within the backend the device is in.
  if (device.parent !== undefined && !(isPort(device.parent) && device.parent.backend === backend))
    return `${label} has a parent that is not a port of ${backend}`;
  // Attachments are read from the hypervisors, never taken from a driver.
  if (device.attachment !== undefined) return `${label} says it is attached`;
  if (device.inUse !== undefined && typeof device.inUse !== 'boolean')
    return `${label} has an inUse that is not true or false`;
  for (const field of TEXT_FIELDS) {
    const text = device[field];
    if (text !== undefined && !isSafeText(text, MAX_STRING)) return `${label}: its ${field} is not plain text`;
  }
  const { data } = device;
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return `${label} has no data record`;
  for (const [name, value] of Object.entries(data)) {
    const plain =
      typeof value === 'string'
        ? isSafeText(value, MAX_STRING)
        : typeof value === 'number' || typeof value === 'boolean';
    if (!plain || !isSafeText(name, 64)) return `${label}: its data.${inert(name)} is not plain text`;
  }
  return undefined;
}

function isPort(port: unknown): port is Port {
  if (typeof port !== 'object' || port === null) return false;
  const { devclass, backend, portId } = port as Record<string, unknown>;
  return typeof devclass === 'string' && typeof backend === 'string' && typeof portId === 'string';
}

/** A port as a fault names it: its parts came from the driver, so they are made inert first. */
function portText(port: Port): string {
  return sanitizeText(portKey(port), 100) ?? 'a device with an empty port';
}

/** A string the driver gave, as a fault names it. */
function inert(text: string): string {
  return sanitizeText(text, 40) ?? "''";
}

/** A value the driver gave, as a fault quotes it. */
function quoted(value: unknown): string {
  return typeof value === 'string' ? `'${sanitizeText(value, 40) ?? ''}'` : typeof value;
}
