/**
 * Input checks for the state store. Every value is bound as an SQL parameter, so these checks are not
 * about injection: they keep garbage (and caller bugs) out of a database that outlives the process,
 * and turn it into coded errors at the call that made it rather than at the next read.
 */
import {
  ASSIGNMENT_MODES,
  type AssignmentMode,
  type DeviceAssignment,
  Errors,
  type InterfaceCode,
  isInterfaceCode,
  isValidDomainName,
} from '@devgate/core';

const DEVCLASS = /^[a-z][a-z0-9_-]{0,31}$/;
// USB busids (`1-1.4`), block names (`nvme0n1p2`), PCI paths (`00_08.1-00_00.0`) and BDFs (`0000:00:14.0`).
const PORT_ID = /^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$/;
// Qubes' option key characters.
const OPTION_KEY = /^[0-9A-Za-z_.-]{1,64}$/;
const ACTION = /^[a-z][a-z0-9-]{0,31}$/;
const ERROR_CODE = /^[A-Z][A-Z0-9_]{0,63}$/;
// The only shape `at` columns hold, so that text order is time order.
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
// RFC 3339 date-times as the API's `date-time` format lets them through: `T`, `t` or a space, any
// fraction, `Z` or an offset (`+02:00`, `+0200`, `+02`).
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2})(?::?(\d{2}))?)$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

const MAX_DEVICE_ID = 512;
/** The longest free text (reasons, descriptions) the store keeps. */
export const MAX_TEXT = 4096;
const MAX_DETAILS_JSON = 64 * 1024;

export const WILDCARD = '*';

function invalid(field: string, value: unknown, reason: string): Error {
  return Errors.invalidStateValue({ field, value: String(value).slice(0, 80), reason });
}

export function domainName(value: string): string {
  if (typeof value !== 'string' || !isValidDomainName(value)) throw Errors.invalidDomainName({ name: String(value) });
  return value;
}

export function devclass(value: string): string {
  if (typeof value !== 'string' || !DEVCLASS.test(value))
    throw invalid('device class', value, 'expected [a-z][a-z0-9_-]*');
  return value;
}

export function portId(value: string, wildcard: boolean): string {
  if (wildcard && value === WILDCARD) return value;
  if (typeof value !== 'string' || !PORT_ID.test(value)) throw invalid('port id', value, 'not a port id');
  return value;
}

export function deviceId(value: string, wildcard: boolean): string {
  if (wildcard && value === WILDCARD) return value;
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_DEVICE_ID || value === WILDCARD)
    throw invalid('device id', value, `expected 1 to ${MAX_DEVICE_ID} characters`);
  if (CONTROL.test(value)) throw invalid('device id', value, 'contains control characters');
  return value;
}

/** Qubes forbids `*:*`: an assignment (or a remembered answer) that matches every device. */
export function notBothWildcards(port: string, device: string): void {
  if (port === WILDCARD && device === WILDCARD)
    throw invalid('device', `${port}:${device}`, 'port and device id cannot both be *');
}

export function assignmentMode(value: string): Exclude<AssignmentMode, 'manual'> {
  if (value === 'manual') throw Errors.manualNotAssignable();
  if (!(ASSIGNMENT_MODES as readonly string[]).includes(value))
    throw invalid(
      'assignment mode',
      value,
      `expected one of ${ASSIGNMENT_MODES.filter((m) => m !== 'manual').join(', ')}`,
    );
  return value as Exclude<AssignmentMode, 'manual'>;
}

export function interfacePattern(value: string): InterfaceCode {
  if (typeof value !== 'string' || !isInterfaceCode(value))
    throw Errors.invalidInterfacePattern({ pattern: String(value) });
  return value;
}

export function options(value: Readonly<Record<string, string>> | undefined): string {
  const entries = Object.entries(value ?? {});
  for (const [key, v] of entries) {
    if (!OPTION_KEY.test(key)) throw invalid('option name', key, 'expected [0-9A-Za-z_.-]');
    if (typeof v !== 'string' || v.length > MAX_TEXT || CONTROL.test(v))
      throw invalid(`option ${key}`, v, 'expected printable text');
  }
  // Sorted keys: the same options always serialize the same way.
  return JSON.stringify(Object.fromEntries(entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
}

export function action(value: string): string {
  if (typeof value !== 'string' || !ACTION.test(value))
    throw invalid('audit action', value, 'expected [a-z][a-z0-9-]*');
  return value;
}

export function errorCode(value: string): string {
  if (typeof value !== 'string' || !ERROR_CODE.test(value))
    throw invalid('error code', value, 'expected [A-Z][A-Z0-9_]*');
  return value;
}

/** Free text (actors, reasons): callers pass SafeText; this only bounds it. */
export function text(field: string, value: string, max = MAX_TEXT): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > max)
    throw invalid(field, value, `expected 1 to ${max} characters`);
  if (CONTROL.test(value)) throw invalid(field, value, 'contains control characters');
  return value;
}

export function details(value: Readonly<Record<string, unknown>>): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (error) {
    throw invalid('audit details', '[object]', (error as Error).message);
  }
  if (json === undefined || !json.startsWith('{')) throw invalid('audit details', json, 'expected a JSON object');
  if (json.length > MAX_DETAILS_JSON)
    throw invalid('audit details', json, `longer than ${MAX_DETAILS_JSON} characters`);
  return json;
}

/**
 * A Date or an RFC 3339 string as the `at` columns store it (UTC, milliseconds, `Z`): a time given
 * in another zone (`devgate audit --since 2026-11-27T11:00:00+01:00`) is that instant in UTC, as
 * text comparison with the stored times needs.
 */
export function isoTime(field: string, value: Date | string): string {
  const expected = 'expected an RFC 3339 time, like 2026-11-27T10:00:00Z or 2026-11-27T11:00:00.000+01:00';
  let time: number;
  if (value instanceof Date) time = value.getTime();
  else {
    const m = typeof value === 'string' ? RFC3339.exec(value) : null;
    if (!m) throw invalid(field, value, expected);
    const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
    const ms = Number((m[7] ?? '').padEnd(3, '0').slice(0, 3));
    const offset = m[8] ? (m[8] === '-' ? -1 : 1) * (Number(m[9]) * 60 + Number(m[10] ?? 0)) : 0;
    const local = new Date(Date.UTC(year, month - 1, day, hour, minute, second, ms));
    // Date.UTC rolls 31 February or 24:00 over into the next day: refuse those instead.
    if (
      local.getUTCFullYear() !== year ||
      local.getUTCMonth() !== month - 1 ||
      local.getUTCDate() !== day ||
      local.getUTCHours() !== hour ||
      local.getUTCMinutes() !== minute ||
      Number(m[9] ?? 0) > 23 ||
      Number(m[10] ?? 0) > 59
    )
      throw invalid(field, value, expected);
    time = local.getTime() - offset * 60_000;
  }
  if (Number.isNaN(time)) throw invalid(field, value, 'invalid date');
  const iso = new Date(time).toISOString();
  // Years past 9999 (or before 0) print as `+010000-...`, which would sort wrongly as text.
  if (!ISO_TIME.test(iso)) throw invalid(field, value, 'outside the years 0000 to 9999');
  return iso;
}

export function count(field: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 0 || value > max)
    throw invalid(field, value, `expected an integer 0..${max}`);
  return value;
}

type Scope = Pick<DeviceAssignment, 'devclass' | 'backend' | 'portId' | 'deviceId' | 'frontend'>;

/** An assignment's (or a remembered answer's) scope: a port, a device, or both; never neither. */
export function scopeKey(key: Scope): Required<Scope> {
  const port = portId(key.portId, true);
  const device = deviceId(key.deviceId, true);
  notBothWildcards(port, device);
  return {
    devclass: devclass(key.devclass),
    backend: domainName(key.backend),
    portId: port,
    deviceId: device,
    frontend: domainName(key.frontend),
  };
}
