/**
 * The `input-linux` attach kind: an input device's event nodes passed to a VM (QEMU's input-linux
 * object; libvirt's `<input type='evdev'>`), with a hotkey that moves the grab between host and VM.
 * The driver builds the spec, the data path fills in the checked nodes (`evdev`), the connectors of
 * QEMU and libvirt perform it. @since 1
 */
export const INPUT_LINUX_KIND = 'input-linux';

/** The grab-toggle hotkeys: QEMU's GrabToggleKeys, which libvirt's grabToggle takes as they are. */
export const GRAB_TOGGLES = [
  'ctrl-ctrl',
  'alt-alt',
  'shift-shift',
  'meta-meta',
  'scrolllock',
  'ctrl-scrolllock',
] as const;
export type GrabToggle = (typeof GRAB_TOGGLES)[number];

export function isGrabToggle(value: string): value is GrabToggle {
  return (GRAB_TOGGLES as readonly string[]).includes(value);
}
