import { type AttachSpec, type DeviceInfo, Errors } from '@devgate/core';

const TRUE = new Set(['yes', 'true', '1', 'on', 'y']);
const FALSE = new Set(['no', 'false', '0', 'off', 'n']);

/**
 * Validates a block attach's options as Qubes does (same messages) and builds the connector's spec.
 * `bus` is devgate's own: `usb` (the default, the guest sees a USB stick) or `virtio`.
 */
export function blockAttachSpec(device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec {
  let readOnly = device.data['read-only'] === true;
  let devtype = 'disk';
  let bus = 'usb';
  let frontendDev: string | undefined;
  for (const [option, value] of Object.entries(options)) {
    switch (option) {
      case 'read-only': {
        const wanted = value.toLowerCase();
        if (!TRUE.has(wanted) && !FALSE.has(wanted)) {
          throw Errors.unsupportedOption({ option, message: `Unknown \`read-only\` option value: ${value}` });
        }
        if (FALSE.has(wanted) && readOnly) throw Errors.readOnlyDevice();
        readOnly = TRUE.has(wanted);
        break;
      }
      case 'frontend-dev':
        if (!/^(xvd|sd)[a-z]{1,2}$/.test(value)) {
          throw Errors.unsupportedOption({ option, message: `Invalid frontend-dev option value: ${value}` });
        }
        frontendDev = value;
        break;
      case 'devtype':
        if (value !== 'disk' && value !== 'cdrom') {
          throw Errors.unsupportedOption({ option, message: "devtype option can only have 'disk' or 'cdrom' value" });
        }
        devtype = value;
        break;
      case 'bus':
        if (value !== 'usb' && value !== 'virtio') {
          throw Errors.unsupportedOption({ option, message: "bus option can only have 'usb' or 'virtio' value" });
        }
        bus = value;
        break;
      default:
        throw Errors.unsupportedOption({ option });
    }
  }
  // A CD is read-only whatever was asked.
  if (devtype === 'cdrom') readOnly = true;
  // The path is the backend's to give (DeviceSource.dataPath), checked against the listed device.
  return {
    kind: 'block',
    params: { readOnly, devtype, bus, ...(frontendDev ? { frontendDev } : {}) },
    options: { 'read-only': readOnly ? 'yes' : 'no', ...(devtype === 'cdrom' ? { devtype } : {}) },
  };
}
