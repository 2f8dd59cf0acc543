/**
 * `usbguard generate-policy` for devgate: one rule per USB device present, hubs and root hubs
 * included (with an implicit `block`, a hub left out takes everything behind it along), in
 * USBGuard's enumeration order, so parents come before their children.
 *
 * Each rule is `TARGET id V:P serial "..." name "..." [hash "..." parent-hash "..."] via-port "..."
 * with-interface ... [with-connect-type "..."]`, printed by formatRule: values are quoted and
 * escaped exactly as the parser reads them back (`"` and `\` escaped, every other byte outside
 * printable ASCII as `\xHH`), so a device's own strings can never break out of a rule or reach a
 * terminal. Differences from USBGuard's defaults, all chosen so a rule pins exactly one device:
 *
 *  - via-port is always written (USBGuard: only for devices without a serial, unless `-p`);
 *  - hash and parent-hash are written when the descriptors are known (`withHashes: false` leaves
 *    them out, like `usbguard generate-policy -X`);
 *  - with-connect-type only when sysfs reports one (USBGuard writes `""` for none, which would pin a
 *    recorded device to "no connect type" on the real machine).
 */
import { type HostTree } from '@devgate/core';
import { type PolicyTarget } from './usbguard/evaluate-rules.js';
import { formatRule } from './usbguard/format-usbguard-rules.js';
import { type UsbGuardRule } from './usbguard/parse-usbguard-rules.js';
import { type UsbGuardDeviceEntry, type UsbGuardDevicesOptions, usbGuardDevices } from './usbguard-devices.js';

export interface GeneratePolicyOptions extends UsbGuardDevicesOptions {
  /** Default `allow`. */
  readonly target?: PolicyTarget;
  /** Default true. */
  readonly withHashes?: boolean;
  /** Default true. */
  readonly withPorts?: boolean;
}

/** The rule that pins one device. */
export function deviceRule(
  entry: UsbGuardDeviceEntry,
  options: Omit<GeneratePolicyOptions, 'bytes'> = {},
): UsbGuardRule {
  const { device } = entry;
  const one = <T>(value: T) => ({ operator: 'equals' as const, values: [value] });
  const [vendor, product] = device.id.split(':');
  const withHashes = options.withHashes ?? true;
  return {
    target: options.target ?? 'allow',
    id: one({ vendor, product }),
    serial: one(device.serial ?? ''),
    name: one(device.name ?? ''),
    ...(withHashes && device.hash !== undefined ? { hash: one(device.hash) } : {}),
    ...(withHashes && device.parentHash !== undefined ? { parentHash: one(device.parentHash) } : {}),
    ...((options.withPorts ?? true) ? { viaPort: { operator: 'equals' as const, values: [...device.viaPort] } } : {}),
    ...(device.withInterface.length > 0
      ? {
          withInterface: {
            operator: 'equals' as const,
            values: device.withInterface.map((text) => {
              const [c, s, p] = text.split(':').map((h) => parseInt(h, 16));
              return { bClass: c, bSubClass: s, bProtocol: p };
            }),
          },
        }
      : {}),
    ...(device.withConnectType ? { withConnectType: one(device.withConnectType) } : {}),
  };
}

/** One rule per device of the tree, in USBGuard's order. */
export function generatePolicyRules(tree: HostTree, options: GeneratePolicyOptions = {}): UsbGuardRule[] {
  return usbGuardDevices(tree, options).map((entry) => deviceRule(entry, options));
}

/** The rules as a rules file: one line each, LF-terminated. */
export function generatePolicy(tree: HostTree, options: GeneratePolicyOptions = {}): string {
  return generatePolicyRules(tree, options)
    .map((rule) => formatRule(rule) + '\n')
    .join('');
}
