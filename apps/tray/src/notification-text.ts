/**
 * The words of every notification, built from device data a device itself chose (USB descriptors,
 * filesystem labels, loop file names). All of it is untrusted: every string is sanitized (no
 * control characters, escape sequences or bidi overrides, bounded length) and, in the body, escaped
 * for the markup the Notifications spec allows (`&`, `<`, `>`), so `<b>` shows as text. Summaries
 * are plain text by the spec and carry no device strings at all.
 */
import { type DeviceCategory, type DeviceJson, deviceCategory, sanitizeText } from '@devgate/core';
import { type AskJson } from './daemon-api.js';

export const APP_NAME = 'devgate-tray';

export const Urgency = { low: 0, normal: 1, critical: 2 } as const;
export type Urgency = (typeof Urgency)[keyof typeof Urgency];

export interface NotificationAction {
  readonly key: string;
  readonly label: string;
}

/** One notification, ready for org.freedesktop.Notifications.Notify. */
export interface NotificationSpec {
  readonly summary: string;
  readonly body: string;
  readonly icon: string;
  /** `device.added`, `device.removed`, `device.error` or `device`. */
  readonly category: string;
  readonly urgency: Urgency;
  readonly actions: readonly NotificationAction[];
  /** -1: the server's default; 0: until dismissed. */
  readonly expireMs: number;
  readonly transient?: boolean;
}

/**
 * Text the server shows: whether it interprets body markup (capability `body-markup`), or
 * `unknown` when it would not tell (GetCapabilities failed).
 */
export interface TextMode {
  readonly markup: boolean | 'unknown';
}

/** Printable, single-line, bounded text (or `fallback`). Applied again here, whatever devgated did. */
export function cleanText(raw: string | null | undefined, max = 160, fallback = ''): string {
  return sanitizeText(raw ?? undefined, max) ?? fallback;
}

/** The body markup escape of the spec: `&`, `<` and `>` become entities. */
export function escapeMarkup(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Summaries are plain text; markup characters are dropped rather than risk a server that parses them. */
export function cleanSummary(raw: string): string {
  return cleanText(raw, 80)
    .replace(/[<>&]/g, '')
    .replace(/\s{2,}/g, ' ')
    .trim();
}

/**
 * Body lines: each cleaned, escaped when the server reads markup, joined by newlines. A server that
 * may or may not read markup gets none of `<>&`: no markup either way, and no entities shown raw.
 */
export function bodyText(lines: readonly string[], mode: TextMode): string {
  const shown = (line: string) =>
    mode.markup === 'unknown' ? line.replace(/[<>&]/g, '') : mode.markup ? escapeMarkup(line) : line;
  return lines
    .map((line) => cleanText(line, 300))
    .filter((line) => line.length > 0)
    .map(shown)
    .join('\n');
}

/** A VM name as a label part (devgated validates names; this keeps the tray safe regardless). */
export function vmLabel(name: string): string {
  return cleanSummary(cleanText(name, 64, '?')) || '?';
}

const ICONS: Partial<Record<DeviceCategory, string>> = {
  Keyboard: 'input-keyboard',
  Mouse: 'input-mouse',
  Input: 'input-tablet',
  Camera: 'camera-web',
  Microphone: 'audio-input-microphone',
  Audio: 'audio-card',
  Multimedia: 'applications-multimedia',
  Printer: 'printer',
  Network: 'network-wired',
  Bluetooth: 'bluetooth',
  USB_Storage: 'drive-removable-media',
  Block_Storage: 'drive-harddisk',
  Storage: 'drive-harddisk',
  Smart_Card_Readers: 'media-flash',
  Display: 'video-display',
  PCI_USB: 'drive-removable-media-usb',
};

/** A freedesktop icon name for the device's category. */
export function iconFor(device: Pick<DeviceJson, 'interfaces' | 'data'>): string {
  const category = deviceCategory(device.interfaces);
  if ((category === 'Block_Storage' || category === 'Storage') && device.data?.removable === true) {
    return 'drive-removable-media';
  }
  return ICONS[category] ?? 'drive-removable-media';
}

/** The category as Qubes' widget names its groups: `USB_Storage` -> `USB Storage`. */
export function categoryLabel(device: Pick<DeviceJson, 'interfaces'>): string {
  return deviceCategory(device.interfaces).replace(/_/g, ' ');
}

export function humanSize(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} bytes` : `${value >= 10 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

/** The device as one line: its description, and its size when it has one. */
export function deviceTitle(device: DeviceJson): string {
  const description = cleanText(device.description, 160, cleanText(device.port, 80, 'unknown device'));
  const size = typeof device.data?.size === 'number' && device.data.size > 0 ? ` (${humanSize(device.data.size)})` : '';
  return `${description}${size}`;
}

function whereLine(device: DeviceJson): string {
  return `Port ${cleanText(device.port, 80)} on ${cleanText(device.backend, 64)}`;
}

export function attachActionKey(vm: string): string {
  return `attach:${vmLabel(vm)}`;
}

/** "Device available", with "Attach to <vm>" for the most relevant VMs and "Ignore". */
export function deviceAddedNotification(
  device: DeviceJson,
  targets: readonly string[],
  mode: TextMode & { readonly actions: boolean },
): NotificationSpec {
  const lines = [`${deviceTitle(device)} is available.`, whereLine(device)];
  if (targets.length === 0) lines.push('No VM to attach it to is known to devgated.');
  return {
    summary: 'Device available',
    body: bodyText(lines, mode),
    icon: iconFor(device),
    category: 'device.added',
    urgency: Urgency.normal,
    actions: mode.actions
      ? [
          ...targets.map((vm) => ({ key: attachActionKey(vm), label: `Attach to ${vmLabel(vm)}` })),
          { key: 'ignore', label: 'Ignore' },
        ]
      : [],
    expireMs: -1,
  };
}

export function deviceRemovedNotification(device: DeviceJson, mode: TextMode): NotificationSpec {
  return {
    summary: 'Device removed',
    body: bodyText([`${deviceTitle(device)} has been removed.`, whereLine(device)], mode),
    icon: iconFor(device),
    category: 'device.removed',
    urgency: Urgency.low,
    actions: [],
    expireMs: -1,
    transient: true,
  };
}

/** Devices named in a burst notification; the others are counted. */
const BURST_NAMED = 3;

/**
 * Many devices at once (a hub, a disk with many partitions, devgated back after a while): one
 * notification for all of them instead of one each. No "Attach to" actions: one click should not
 * send a whole burst to a VM; the tray menu attaches them one by one.
 */
export function devicesBurstNotification(
  devices: readonly DeviceJson[],
  how: 'available' | 'removed',
  mode: TextMode,
): NotificationSpec {
  const named = devices.slice(0, BURST_NAMED).map((d) => `${deviceTitle(d)} (${cleanText(d.port, 80)})`);
  const others = devices.length - named.length;
  const lines = [`${devices.length} devices ${how === 'available' ? 'are available' : 'have been removed'}:`, ...named];
  if (others > 0) lines.push(`and ${others} more.`);
  if (how === 'available') lines.push('Attach them from the devgate tray menu or with devgate attach.');
  return {
    summary: how === 'available' ? 'Devices available' : 'Devices removed',
    body: bodyText(lines, mode),
    icon: devices.length > 0 ? iconFor(devices[0]) : 'drive-removable-media',
    category: how === 'available' ? 'device.added' : 'device.removed',
    urgency: how === 'available' ? Urgency.normal : Urgency.low,
    actions: [],
    expireMs: -1,
    ...(how === 'removed' ? { transient: true } : {}),
  };
}

/** What failed, with devgated's error code, message and hint. */
export interface FailureText {
  readonly verb: 'Attaching' | 'Detaching' | 'Answering for' | 'Opening';
  readonly device: string;
  readonly vm?: string;
  readonly code: string;
  readonly message: string;
  readonly hint?: string;
}

const FAILURE_SUMMARY: Record<FailureText['verb'], string> = {
  Attaching: 'Attaching device failed',
  Detaching: 'Detaching device failed',
  'Answering for': 'Answering failed',
  Opening: 'Opening settings failed',
};

export function failureNotification(failure: FailureText, icon: string, mode: TextMode): NotificationSpec {
  const target = failure.vm ? ` ${failure.verb === 'Detaching' ? 'from' : 'to'} ${vmLabel(failure.vm)}` : '';
  const lines = [
    `${failure.verb} ${failure.device}${target} failed.`,
    `Error: ${cleanText(failure.code, 64, 'DG_INTERNAL')} - ${cleanText(failure.message, 300)}`,
  ];
  if (failure.hint) lines.push(`Hint: ${failure.hint}`);
  return {
    summary: FAILURE_SUMMARY[failure.verb],
    body: bodyText(lines, mode),
    icon: icon || 'dialog-error',
    category: 'device.error',
    urgency: Urgency.critical,
    actions: [],
    expireMs: 0,
  };
}

export const AskAction = {
  allow: 'allow',
  deny: 'deny',
  alwaysAllow: 'always-allow',
  alwaysDeny: 'always-deny',
} as const;

/**
 * How long devgated still waits for an answer; nothing when that time is up or cannot be read (the
 * ask is then not worth showing: devgated denies it, or already has).
 */
export function askTimeLeftMs(ask: Pick<AskJson, 'expiresAt'>, now = Date.now()): number | undefined {
  const left = Date.parse(ask.expiresAt) - now;
  return left > 0 ? left : undefined;
}

/** "Attach device to <vm>?" with Allow / Deny, and the remembered variants when the ask allows it. */
export function askNotification(
  ask: AskJson,
  device: DeviceJson | undefined,
  mode: TextMode & { readonly actions: boolean },
  now = Date.now(),
): NotificationSpec {
  const candidates = ask.candidates.map(vmLabel).slice(0, 3);
  const single = candidates.length === 1;
  const title = device ? deviceTitle(device) : cleanText(ask.description, 160, cleanText(ask.device, 80));
  const remainingMs = askTimeLeftMs(ask, now);
  const lines = [
    single ? `${title} wants to be attached to ${candidates[0]}.` : `${title} may go to ${candidates.join(', ')}.`,
    `Port ${cleanText(ask.device, 80)}; reason: ${cleanText(ask.reason, 200)}`,
  ];
  if (remainingMs !== undefined) lines.push(`Denied automatically in ${Math.ceil(remainingMs / 1000)} s.`);
  const actions: NotificationAction[] = single
    ? [{ key: AskAction.allow, label: 'Allow' }]
    : candidates.map((vm) => ({ key: `${AskAction.allow}:${vm}`, label: `Allow in ${vm}` }));
  actions.push({ key: AskAction.deny, label: 'Deny' });
  if (ask.rememberable) {
    if (single) actions.push({ key: AskAction.alwaysAllow, label: 'Always allow' });
    actions.push({ key: AskAction.alwaysDeny, label: 'Always deny' });
  }
  return {
    summary: single ? `Attach device to ${candidates[0]}?` : 'Attach device?',
    body: bodyText(lines, mode),
    icon: device ? iconFor(device) : 'dialog-question',
    category: 'device',
    urgency: Urgency.critical,
    actions: mode.actions ? actions : [],
    // Gone when devgated stops waiting; closed earlier when the ask is answered.
    expireMs: remainingMs ?? 0,
  };
}
