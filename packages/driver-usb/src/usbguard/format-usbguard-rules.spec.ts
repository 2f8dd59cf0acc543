import { RULE_CORPUS } from './corpus/rules.js';
import { formatRule } from './format-usbguard-rules.js';
import { parseRule, type UsbGuardRule } from './parse-usbguard-rules.js';
import { usbguardVerdict } from './testing/usbguard-rule-parser.js';

describe('formatRule', () => {
  const validRules = RULE_CORPUS.filter((e) => e.valid && !e.rule.trimStart().startsWith('#'));

  it('prints text that parses back to the same rule', () => {
    for (const { rule } of validRules) {
      const once = formatRule(parseRule(rule));
      expect(formatRule(parseRule(once))).toBe(once);
    }
  });

  it('orders attributes as USBGuard does and drops the equals operator of a single value', () => {
    expect(formatRule(parseRule('allow label "l" if true name "n" id equals { 1234:5678 }'))).toBe(
      'allow id 1234:5678 name "n" if true label "l"',
    );
  });

  it('prints rules built in code, deriving condition arguments', () => {
    const query = parseRule('allow with-interface 03:*:*');
    const rule: UsbGuardRule = {
      target: 'reject',
      id: { operator: 'one-of', values: [{ vendor: '046d', product: '*' }] },
      name: { operator: 'equals', values: ['caf\u00e9 "bar"\\ \udcff'] },
      withInterface: { operator: 'equals', values: [{ bClass: 3, bSubClass: 1, bProtocol: 2 }] },
      conditions: {
        operator: 'all-of',
        values: [
          { kind: 'localtime', negated: false, from: 8 * 3600, to: 17 * 3600 + 30 * 60 },
          { kind: 'allowed-matches', negated: true, query },
          { kind: 'random', negated: false, probability: 0.25 },
          { kind: 'rule-applied', negated: false, withinSeconds: 60 },
        ],
      },
    };
    const text = formatRule(rule);
    expect(text).toBe(
      'reject id one-of { 046d:* } name "caf\\xc3\\xa9 \\"bar\\"\\\\ \\xff" with-interface 03:01:02 ' +
        'if all-of { localtime(08:00-17:30) !allowed-matches(with-interface 03:*:*) random(0.25) rule-applied(60) }',
    );
    expect(usbguardVerdict(text)).toEqual({ valid: true, output: text, detail: '' });
    const seconds = { kind: 'localtime', negated: false, from: 5, to: 23 * 3600 + 59 * 60 + 59 } as const;
    expect(formatRule({ target: 'allow', conditions: { operator: 'equals', values: [seconds] } })).toBe(
      'allow if localtime(00:00:05-23:59:59)',
    );
  });
});
