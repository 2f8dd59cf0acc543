/**
 * The attributes of USBGuard's rule language, shared by the parser (which keyword fills which field,
 * and how its value is read) and the formatter (the order USBGuard prints them in). Internal to the
 * package: not exported from its index.
 */
import type { UsbGuardRule } from './parse-usbguard-rules.js';

export type AttributeKey = Exclude<keyof UsbGuardRule, 'target' | 'source'>;

/** Keyword, AST field and value kind, in the order USBGuard prints attributes. */
export const ATTRIBUTES: readonly {
  keyword: string;
  key: AttributeKey;
  value: 'string' | 'id' | 'interface' | 'condition';
}[] = [
  { keyword: 'id', key: 'id', value: 'id' },
  { keyword: 'serial', key: 'serial', value: 'string' },
  { keyword: 'name', key: 'name', value: 'string' },
  { keyword: 'hash', key: 'hash', value: 'string' },
  { keyword: 'parent-hash', key: 'parentHash', value: 'string' },
  { keyword: 'via-port', key: 'viaPort', value: 'string' },
  { keyword: 'with-interface', key: 'withInterface', value: 'interface' },
  { keyword: 'if', key: 'conditions', value: 'condition' },
  { keyword: 'with-connect-type', key: 'withConnectType', value: 'string' },
  { keyword: 'label', key: 'label', value: 'string' },
];
