import { HostTree, type RawDeviceRecord } from '@devgate/core';

/** Strings a malicious device can present: escapes, control characters, markup, bidi, sheer size. */
export const HOSTILE_STRINGS = [
  '\u001b[2J\u001b[31mPWNED\u001b[0m',
  '\u001b]0;title\u0007',
  'line\nbreak\r\u0000nul\u0008bs',
  '<b>bold</b> <a href="x">link</a> &amp;',
  '\u202eexe.pdf',
  '\u009b31m',
  'A'.repeat(100_000),
];

/** Properties and attributes that hold device-chosen text (descriptors, labels, names). */
const DESCRIPTIVE = /^(ID_(MODEL|VENDOR|SERIAL|FS_LABEL|PART_ENTRY_NAME)\w*|DM_NAME|NAME|HID_NAME|HID_UNIQ)$/;
const DESCRIPTIVE_ATTRIBUTES = /(^|\/)(model|vendor|serial|manufacturer|product|name|label|backing_file)$/;

/**
 * The same tree with every device-chosen string replaced by hostile text (one payload per record,
 * cycling). Drivers must keep all of it inert: sanitized, bounded, never interpreted.
 */
export function hostileTree(tree: HostTree): HostTree {
  const records = tree.devices().map((record, i): RawDeviceRecord => {
    const payload = HOSTILE_STRINGS[i % HOSTILE_STRINGS.length];
    const properties: Record<string, string> = {};
    for (const [key, value] of Object.entries(record.properties)) {
      properties[key] = DESCRIPTIVE.test(key) ? `${value}${payload}` : value;
    }
    return {
      ...record,
      properties,
      attribute: (name) => {
        const value = record.attribute(name);
        return value !== undefined && DESCRIPTIVE_ATTRIBUTES.test(name) ? `${value}${payload}` : value;
      },
    };
  });
  return new HostTree(records, tree.usage);
}

/** Every string inside a value, with its path, for assertions over whole objects. */
export function allStrings(value: unknown, at = '$'): [string, string][] {
  if (typeof value === 'string') return [[at, value]];
  if (Array.isArray(value)) return value.flatMap((v, i) => allStrings(v, `${at}[${i}]`));
  if (value && typeof value === 'object') {
    return Object.entries(value).flatMap(([k, v]) => allStrings(v, `${at}.${k}`));
  }
  return [];
}

/** What no output string may contain: C0/C1 controls, DEL, bidi overrides. */
// eslint-disable-next-line no-control-regex
export const UNSAFE_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;
