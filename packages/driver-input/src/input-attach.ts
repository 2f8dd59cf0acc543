import {
  type AttachSpec,
  type DeviceInfo,
  Errors,
  GRAB_TOGGLES,
  INPUT_LINUX_KIND,
  isGrabToggle,
  portLabel,
} from '@devgate/core';

const EVENT_NODE = /^event\d{1,6}$/;
const MAJOR_MINOR = /^\d{1,4}:\d{1,7}$/;

/**
 * How an input device is handed to a VM: one QEMU `input-linux` object per event node (kind
 * `input-linux`). QEMU grabs the nodes (EVIOCGRAB), so the host stops seeing the device until the
 * grab-toggle hotkey hands it back, or the device is detached.
 *
 * Options (QEMU's InputLinuxProperties), with Qubes' wording for unknown ones:
 *   grab-toggle=ctrl-ctrl|alt-alt|shift-shift|meta-meta|scrolllock|ctrl-scrolllock   (default ctrl-ctrl)
 *   grab-all=yes|no   the hotkey toggles every input-linux device of the VM, not only this one (default no)
 *   repeat=yes|no     pass the host's key repeat on (default no)
 *
 * The parameters name the event nodes and their major:minor as listed; the backend's data path checks
 * them and fills in the device nodes (`evdev`), so a node reused by another device is never opened.
 */
export function inputAttachSpec(device: DeviceInfo, options: Readonly<Record<string, string>>): AttachSpec {
  let grabToggle: string = 'ctrl-ctrl';
  let grabAll = false;
  let repeat = false;
  for (const [option, value] of Object.entries(options)) {
    switch (option) {
      case 'grab-toggle':
        if (!isGrabToggle(value)) {
          throw Errors.unsupportedOption({
            option,
            message: `grab-toggle option can only be one of ${GRAB_TOGGLES.join(', ')}`,
          });
        }
        grabToggle = value;
        break;
      case 'grab-all':
      case 'repeat': {
        const flag = yesNo(value);
        if (flag === undefined) {
          throw Errors.unsupportedOption({ option, message: `${option} option can only have 'yes' or 'no' value` });
        }
        if (option === 'grab-all') grabAll = flag;
        else repeat = flag;
        break;
      }
      default:
        throw Errors.unsupportedOption({ option });
    }
  }
  const events = String(device.data['event-nodes'] ?? '')
    .split(',')
    .filter(Boolean);
  const devices = String(device.data['event-devices'] ?? '')
    .split(',')
    .filter(Boolean);
  if (events.length === 0 || events.length !== devices.length) {
    throw Errors.notAttachable({
      device: portLabel(device.port),
      backend: device.port.backend,
      reason: 'it has no event node to pass through',
    });
  }
  if (!events.every((e) => EVENT_NODE.test(e)) || !devices.every((d) => MAJOR_MINOR.test(d))) {
    // A recording without device numbers (or a backend that sent malformed ones): nothing to open.
    throw Errors.notAttachable({
      device: portLabel(device.port),
      backend: device.port.backend,
      reason: 'its event nodes have no valid device numbers',
    });
  }
  return {
    kind: INPUT_LINUX_KIND,
    params: { events: events.join(','), devices: devices.join(','), grabToggle, grabAll, repeat },
    options: { 'grab-toggle': grabToggle, 'grab-all': grabAll ? 'yes' : 'no', repeat: repeat ? 'yes' : 'no' },
  };
}

function yesNo(value: string): boolean | undefined {
  const v = value.toLowerCase();
  if (['yes', 'true', 'on', '1'].includes(v)) return true;
  if (['no', 'false', 'off', '0'].includes(v)) return false;
  return undefined;
}
