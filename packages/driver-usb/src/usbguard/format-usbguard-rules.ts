/**
 * USBGuard rules as text: a parsed or built UsbGuardRule printed exactly as USBGuard 1.1.2 prints it
 * (`usbguard-rule-parser`, `usbguard list-rules`), so that parsing the text gives the rule back.
 * Reading rules is parse-usbguard-rules.ts; the grammar is described there.
 */
import { ATTRIBUTES } from './rule-attributes.js';
import { stringToBytes } from './rule-strings.js';
import type {
  UsbGuardAttribute,
  UsbGuardCondition,
  UsbGuardDeviceId,
  UsbGuardInterfaceType,
  UsbGuardRule,
} from './parse-usbguard-rules.js';

/** The rule as USBGuard prints it (`usbguard-rule-parser`, `usbguard list-rules`). */
export function formatRule(rule: UsbGuardRule): string {
  let out: string = rule.target;
  for (const { keyword, key, value } of ATTRIBUTES) {
    const attribute = rule[key] as UsbGuardAttribute<unknown> | undefined;
    if (!attribute || attribute.values.length === 0) continue;
    const print = (v: unknown): string => {
      if (value === 'id') return formatDeviceId(v as UsbGuardDeviceId);
      if (value === 'interface') return formatInterfaceType(v as UsbGuardInterfaceType);
      if (value === 'condition') return formatCondition(v as UsbGuardCondition);
      return quoteRuleString(v as string);
    };
    const values = attribute.values.map(print);
    if (attribute.operator === 'equals' && values.length === 1) {
      out += ` ${keyword} ${values[0]}`;
    } else {
      const operator = attribute.operator === 'equals' ? '' : `${attribute.operator} `;
      out += ` ${keyword} ${operator}{ ${values.join(' ')} }`;
    }
  }
  return out;
}

export function formatDeviceId(id: UsbGuardDeviceId): string {
  return `${id.vendor}:${id.product}`;
}

export function formatInterfaceType(type: UsbGuardInterfaceType): string {
  const hex = (n: number | '*') => (n === '*' ? '*' : n.toString(16).padStart(2, '0'));
  return `${hex(type.bClass)}:${hex(type.bSubClass)}:${type.bSubClass === '*' ? '*' : hex(type.bProtocol)}`;
}

export function formatCondition(condition: UsbGuardCondition): string {
  const argument = condition.argument ?? defaultArgument(condition);
  return `${condition.negated ? '!' : ''}${condition.kind}${argument === undefined ? '' : `(${argument})`}`;
}

/** For conditions built in code rather than parsed: the argument from the parsed fields. */
function defaultArgument(condition: UsbGuardCondition): string | undefined {
  switch (condition.kind) {
    case 'localtime':
      return condition.from === condition.to
        ? formatClock(condition.from)
        : `${formatClock(condition.from)}-${formatClock(condition.to)}`;
    case 'allowed-matches':
      return formatRule({ ...condition.query, target: 'allow' }).slice('allow '.length);
    case 'random':
      return condition.probability === 0.5 ? undefined : String(condition.probability);
    case 'rule-applied':
    case 'rule-evaluated':
      return condition.withinSeconds === undefined ? undefined : String(condition.withinSeconds);
    default:
      return undefined;
  }
}

function formatClock(seconds: number): string {
  const two = (n: number) => String(n).padStart(2, '0');
  const [h, m, s] = [Math.floor(seconds / 3600), Math.floor(seconds / 60) % 60, seconds % 60];
  return s === 0 ? `${two(h)}:${two(m)}` : `${two(h)}:${two(m)}:${two(s)}`;
}

/**
 * A value as USBGuard prints it: in double quotes, `"` and `\` escaped with a backslash, printable
 * ASCII as is, and every other byte (control characters, DEL, each byte of a UTF-8 sequence) as
 * `\xHH` with lowercase hex digits.
 */
function quoteRuleString(value: string): string {
  let out = '"';
  for (const byte of stringToBytes(value)) {
    if (byte === 0x22) out += '\\"';
    else if (byte === 0x5c) out += '\\\\';
    else if (byte >= 0x20 && byte <= 0x7e) out += String.fromCharCode(byte);
    else out += `\\x${byte.toString(16).padStart(2, '0')}`;
  }
  return `${out}"`;
}
