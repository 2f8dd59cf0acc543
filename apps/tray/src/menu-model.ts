/**
 * The tray menu as data, built from devgated's device list (Qubes' qui-devices layout): devices
 * grouped under a header per category, each with a submenu "Attach to <vm>" (preferred VMs, those
 * with an assignment, first) or "Detach from <vm>"; new devices marked; then Settings… and Quit.
 */
import { type DeviceJson } from '@devgate/core';
import { type DomainsView, attachTargets, preferredTargets } from './attach-targets.js';
import { categoryLabel, cleanText, deviceTitle, iconFor, vmLabel } from './notification-text.js';

export type MenuAction =
  | { readonly kind: 'attach'; readonly device: DeviceJson; readonly vm: string }
  | { readonly kind: 'detach'; readonly device: DeviceJson; readonly vm: string }
  | { readonly kind: 'settings' }
  | { readonly kind: 'quit' };

export interface MenuItem {
  /** Stable across rebuilds, so a menu item keeps its dbusmenu id. */
  readonly key: string;
  readonly label?: string;
  readonly separator?: boolean;
  readonly enabled?: boolean;
  readonly iconName?: string;
  readonly action?: MenuAction;
  readonly children?: readonly MenuItem[];
}

export interface MenuInput {
  /** Every device devgated lists (hidden ones are left out unless attached). */
  readonly devices: readonly DeviceJson[];
  readonly view: DomainsView;
  readonly connected: boolean;
  readonly isNew: (device: DeviceJson) => boolean;
}

export const NEW_MARK = 'NEW';

/** dbusmenu labels treat `_` as a mnemonic marker; a literal one is written `__`. */
export function menuLabel(text: string): string {
  return text.replace(/_/g, '__');
}

/** Devices listed in the menu: available ones, and hidden ones that a VM holds. */
export function listedDevices(devices: readonly DeviceJson[]): DeviceJson[] {
  return devices.filter((d) => d.hidden === null || d.attachment !== null);
}

export function buildMenu(input: MenuInput): MenuItem[] {
  const items: MenuItem[] = [];
  if (!input.connected) {
    items.push({ key: 'status', label: 'devgated is not reachable', enabled: false, iconName: 'dialog-warning' });
    items.push({ key: 'status-sep', separator: true });
  }
  const devices = listedDevices(input.devices)
    .map((device) => ({ device, group: categoryLabel(device), title: deviceTitle(device) }))
    .sort(
      (a, b) =>
        a.group.localeCompare(b.group) ||
        a.device.class.localeCompare(b.device.class) ||
        a.title.localeCompare(b.title) ||
        a.device.port.localeCompare(b.device.port),
    );
  if (devices.length === 0 && input.connected) {
    items.push({ key: 'empty', label: 'No devices', enabled: false });
  }
  let group: string | undefined;
  for (const { device, group: deviceGroup, title } of devices) {
    if (deviceGroup !== group) {
      group = deviceGroup;
      items.push({ key: `group:${group}`, label: menuLabel(group), enabled: false });
    }
    items.push(deviceItem(device, title, input));
  }
  items.push({ key: 'sep-end', separator: true });
  items.push({ key: 'settings', label: 'Settings…', iconName: 'preferences-system', action: { kind: 'settings' } });
  items.push({ key: 'quit', label: 'Quit', iconName: 'application-exit', action: { kind: 'quit' } });
  return items;
}

function deviceItem(device: DeviceJson, title: string, input: MenuInput): MenuItem {
  const key = `device:${device.port}#${device.deviceId}`;
  const mark = input.isNew(device) ? `${NEW_MARK}  ` : '';
  const frontend = device.attachment?.frontend;
  const where = `${cleanText(device.port, 80)} → ${frontend ? vmLabel(frontend) : 'not attached'}`;
  const children: MenuItem[] = [
    { key: `${key}:header`, label: menuLabel(where), enabled: false },
    { key: `${key}:sep`, separator: true },
  ];
  if (frontend) {
    children.push({
      key: `${key}:detach:${frontend}`,
      label: menuLabel(`Detach from ${vmLabel(frontend)}`),
      iconName: 'media-eject',
      action: { kind: 'detach', device, vm: frontend },
    });
  } else {
    const preferred = preferredTargets(device, input.view);
    const targets = attachTargets(device, input.view);
    for (const vm of targets) {
      children.push({
        key: `${key}:attach:${vm}`,
        label: menuLabel(`Attach to ${vmLabel(vm)}${preferred.has(vm) ? ' (preferred)' : ''}`),
        action: { kind: 'attach', device, vm },
      });
    }
    if (targets.length === 0) children.push({ key: `${key}:none`, label: 'No VM to attach to', enabled: false });
  }
  return {
    key,
    label: menuLabel(`${mark}${title}`),
    iconName: iconFor(device),
    children,
  };
}
