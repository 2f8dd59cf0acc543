import { type EvaluationContext, type UsbGuardDevice, evaluate, matchesDevice, solve } from './evaluate-rules.js';
import { parseRule, parseRulesFile, type UsbGuardRule } from './parse-usbguard-rules.js';

const KEYBOARD: UsbGuardDevice = {
  id: '046d:c52b',
  name: 'USB Receiver',
  serial: 'ABC123',
  hash: 'hash-kbd',
  parentHash: 'hash-hub',
  viaPort: ['1-2'],
  withInterface: ['03:01:01', '03:01:02', '03:00:00'],
  withConnectType: 'hotplug',
};

const STICK: UsbGuardDevice = {
  id: '0951:1666',
  name: 'DataTraveler 3.0',
  viaPort: ['1-1'],
  withInterface: ['08:06:50'],
};

// 10:30:15 local time; the tests read the local clock unless they ask for UTC.
const NOW = new Date(2026, 10, 27, 10, 30, 15);
const CTX: EvaluationContext = { now: NOW };

const rules = (...texts: string[]): UsbGuardRule[] => texts.map((t) => parseRule(t));
const matches = (rule: string, device: UsbGuardDevice = KEYBOARD) => matchesDevice(parseRule(rule), device);
const decide = (rule: string, context: EvaluationContext = CTX, device: UsbGuardDevice = KEYBOARD) =>
  evaluate(rules(rule), device, context, 'block').target;

describe('evaluate', () => {
  it('lets the first matching rule decide and names it', () => {
    const list = rules('allow id 0951:1666', 'reject with-interface one-of { 03:*:* }', 'allow id 046d:c52b');
    const decision = evaluate(list, KEYBOARD, CTX);
    expect(decision).toEqual({ target: 'reject', rule: list[1], ruleIndex: 1, implicit: false });
    expect(evaluate(list, STICK, CTX)).toMatchObject({ target: 'allow', ruleIndex: 0 });
  });

  it('falls back to the implicit target, block by default', () => {
    const list = rules('allow id 1234:5678');
    expect(evaluate(list, KEYBOARD, CTX)).toEqual({ target: 'block', implicit: true });
    expect(evaluate(list, KEYBOARD, CTX, 'reject')).toEqual({ target: 'reject', implicit: true });
    expect(evaluate([], KEYBOARD, CTX, 'allow')).toEqual({ target: 'allow', implicit: true });
  });

  it('treats a target-only rule as a catch-all', () => {
    expect(evaluate(rules('allow id 1234:5678', 'reject'), KEYBOARD, CTX)).toMatchObject({
      target: 'reject',
      ruleIndex: 1,
    });
  });

  it('skips match and device rules, which never decide', () => {
    const list = rules('match id 046d:c52b', 'device id 046d:c52b', 'allow id 046d:*');
    expect(evaluate(list, KEYBOARD, CTX)).toMatchObject({ target: 'allow', ruleIndex: 2 });
  });

  it('moves on when the attributes match but the conditions do not', () => {
    const list = rules('allow id 046d:c52b if false', 'block id 046d:c52b');
    expect(evaluate(list, KEYBOARD, CTX)).toMatchObject({ target: 'block', ruleIndex: 1 });
  });

  it('evaluates conditions only for rules whose attributes match', () => {
    const random = jest.fn(() => 0);
    evaluate(rules('allow id 1234:5678 if random', 'block'), KEYBOARD, { now: NOW, random });
    expect(random).not.toHaveBeenCalled();
  });

  it('returns the rule with its file and line, for the audit log', () => {
    const list = parseRulesFile('# policy\nallow id 0951:*\nblock\n', '/etc/usbguard/rules.conf');
    expect(evaluate(list, STICK, CTX).rule?.source).toEqual({ file: '/etc/usbguard/rules.conf', line: 2 });
  });
});

describe('attributes', () => {
  it('id: exact, vendor wildcard, full wildcard, hex case ignored', () => {
    expect(matches('allow id 046d:c52b')).toBe(true);
    expect(matches('allow id 046D:C52B')).toBe(true);
    expect(matches('allow id 046d:*')).toBe(true);
    expect(matches('allow id *:*')).toBe(true);
    expect(matches('allow id 046d:c52c')).toBe(false);
    expect(matches('allow id 046e:*')).toBe(false);
    expect(matches('allow 046d:c52b')).toBe(true);
  });

  it('string attributes compare exactly', () => {
    expect(matches('allow name "USB Receiver" serial "ABC123" hash "hash-kbd" parent-hash "hash-hub"')).toBe(true);
    expect(matches('allow name "usb receiver"')).toBe(false);
    expect(matches('allow via-port "1-2" with-connect-type "hotplug"')).toBe(true);
    expect(matches('allow via-port "1-2.1"')).toBe(false);
    expect(matches('allow with-connect-type "hardwired"')).toBe(false);
  });

  it('a device without a serial (or hash, name, connect type) has the empty one', () => {
    expect(matches('allow serial ""', STICK)).toBe(true);
    expect(matches('allow serial none-of { "" }', STICK)).toBe(false);
    expect(matches('allow with-connect-type ""', STICK)).toBe(true);
  });

  it('decodes escapes before comparing', () => {
    const device = { ...STICK, name: 'Caf\u00e9 "Stick"' };
    expect(matches('allow name "Caf\\xc3\\xa9 \\"Stick\\""', device)).toBe(true);
    expect(matches('allow name "Café \\"Stick\\""', device)).toBe(true);
  });

  it('labels are not matched against anything', () => {
    expect(matches('allow id 046d:c52b label "whatever"')).toBe(true);
  });

  it('every attribute of a rule must match', () => {
    expect(matches('allow id 046d:c52b name "USB Receiver" via-port "1-1"')).toBe(false);
  });

  it('with-interface wildcards cover subclass and protocol', () => {
    expect(matches('allow with-interface one-of { 03:*:* }')).toBe(true);
    expect(matches('allow with-interface one-of { 03:01:* }')).toBe(true);
    expect(matches('allow with-interface one-of { 03:02:* }')).toBe(false);
    expect(matches('allow with-interface 08:06:50', STICK)).toBe(true);
    expect(matches('allow with-interface 08:06:62', STICK)).toBe(false);
  });
});

describe('set operators on with-interface (device: 03:01:01 03:01:02 03:00:00)', () => {
  it.each([
    ['equals', '{ 03:00:00 03:01:02 03:01:01 }', true],
    ['equals', '{ 03:*:* 03:*:* 03:*:* }', true],
    ['equals', '{ 03:01:01 03:01:02 }', false],
    ['equals', '03:*:*', false],
    ['equals-ordered', '{ 03:01:01 03:01:02 03:00:00 }', true],
    ['equals-ordered', '{ 03:01:02 03:01:01 03:00:00 }', false],
    ['all-of', '{ 03:01:01 03:00:00 }', true],
    ['all-of', '{ 03:01:01 08:*:* }', false],
    ['one-of', '{ 08:*:* 03:00:00 }', true],
    ['one-of', '{ 08:*:* e0:*:* }', false],
    ['none-of', '{ 08:*:* e0:*:* }', true],
    ['none-of', '{ 08:*:* 03:01:* }', false],
    ['match-all', '{ 03:*:* }', true],
    ['match-all', '{ 03:01:* }', false],
    ['match-all', '{ 03:01:* 03:00:00 08:*:* }', true],
  ])('%s %s → %s', (operator, set, expected) => {
    const text = set.startsWith('{') ? `allow with-interface ${operator} ${set}` : `allow with-interface ${set}`;
    expect(matches(text)).toBe(expected);
  });

  it('match-all holds for a device with no interfaces; one-of does not', () => {
    const bare = { ...STICK, withInterface: [] };
    expect(matches('allow with-interface match-all { 03:*:* }', bare)).toBe(true);
    expect(matches('allow with-interface one-of { 03:*:* }', bare)).toBe(false);
  });

  it('applies to string attributes too (via-port)', () => {
    const hub = { ...STICK, viaPort: ['1-1', '2-1'] };
    expect(matches('allow via-port one-of { "3-1" "2-1" }', hub)).toBe(true);
    expect(matches('allow via-port equals { "2-1" "1-1" }', hub)).toBe(true);
    expect(matches('allow via-port equals-ordered { "2-1" "1-1" }', hub)).toBe(false);
    expect(matches('allow via-port "1-1"', hub)).toBe(false);
  });

  it('solve works on any values', () => {
    const eq = (a: number, b: number) => a === b;
    expect(solve('all-of', [1, 2], [2, 1, 3], eq)).toBe(true);
    expect(solve('equals', [1, 2], [2, 1, 3], eq)).toBe(false);
    expect(solve('none-of', [4], [1, 2, 3], eq)).toBe(true);
  });
});

describe('conditions', () => {
  it('true, false and negation', () => {
    expect(decide('allow if true')).toBe('allow');
    expect(decide('allow if false')).toBe('block');
    expect(decide('allow if !false')).toBe('allow');
    expect(decide('allow if !true')).toBe('block');
  });

  it('localtime: a range including both ends, on the local clock', () => {
    expect(decide('allow if localtime(10:00-11:00)')).toBe('allow');
    expect(decide('allow if localtime(10:30:15-11:00)')).toBe('allow');
    expect(decide('allow if localtime(08:00-10:30:15)')).toBe('allow');
    expect(decide('allow if localtime(10:30:16-23:59)')).toBe('block');
    expect(decide('allow if localtime(00:00-10:30:14)')).toBe('block');
    expect(decide('allow if !localtime(12:00-13:00)')).toBe('allow');
  });

  it('localtime with a single time holds for that second only', () => {
    expect(decide('allow if localtime(10:30:15)')).toBe('allow');
    expect(decide('allow if localtime(10:30)')).toBe('block');
  });

  it('localtime can read UTC, as USBGuard 1.1.2 does', () => {
    const now = new Date(Date.UTC(2026, 10, 27, 22, 15, 0));
    expect(decide('allow if localtime(22:00-23:00)', { now, clock: 'utc' })).toBe('allow');
    expect(decide('allow if localtime(10:00-11:00)', { now, clock: 'utc' })).toBe('block');
  });

  it('allowed-matches: true when an allowed device matches the query', () => {
    const context = { now: NOW, allowedDevices: [STICK] };
    expect(decide('allow if allowed-matches(with-interface 08:*:*)', context)).toBe('allow');
    expect(decide('allow if allowed-matches(id 0951:1666 name "DataTraveler 3.0")', context)).toBe('allow');
    expect(decide('allow if allowed-matches(with-interface 03:*:*)', context)).toBe('block');
    expect(decide('allow if !allowed-matches(with-interface 03:*:*)', context)).toBe('allow');
    expect(decide('allow if allowed-matches(# every device)', context)).toBe('allow');
  });

  it('allowed-matches is false when nothing is allowed', () => {
    expect(decide('allow if allowed-matches(id *:*)')).toBe('block');
    expect(decide('allow if allowed-matches(id *:*)', { now: NOW, allowedDevices: [] })).toBe('block');
  });

  it('random(p) holds when the generator gives less than p (0.5 without an argument)', () => {
    expect(decide('allow if random(0.25)', { now: NOW, random: () => 0.2 })).toBe('allow');
    expect(decide('allow if random(0.25)', { now: NOW, random: () => 0.25 })).toBe('block');
    expect(decide('allow if random', { now: NOW, random: () => 0.49 })).toBe('allow');
    expect(decide('allow if random', { now: NOW, random: () => 0.5 })).toBe('block');
    expect(decide('allow if random(0)', { now: NOW, random: () => 0 })).toBe('block');
  });

  it('reject if rule-evaluated(10s): within the last 10 seconds, as USBGuard reads the duration', () => {
    const list = rules('reject if rule-evaluated(10s)');
    const ago = (seconds: number) => ({
      now: NOW,
      history: { lastEvaluated: () => new Date(NOW.getTime() - seconds * 1000) },
    });
    expect(evaluate(list, KEYBOARD, ago(10))).toMatchObject({ target: 'reject', ruleIndex: 0 });
    expect(evaluate(list, KEYBOARD, ago(11))).toMatchObject({ implicit: true });
  });

  it('rule-applied and rule-evaluated read the rule history', () => {
    const list = rules('allow if rule-applied', 'reject if rule-evaluated(00:01:00)', 'allow if rule-applied(30)');
    const seen = (rule: UsbGuardRule, at: Date) => (r: UsbGuardRule) => (r === rule ? at : undefined);
    const ago = (seconds: number) => new Date(NOW.getTime() - seconds * 1000);

    expect(evaluate(list, KEYBOARD, CTX)).toMatchObject({ implicit: true });
    expect(evaluate(list, KEYBOARD, { now: NOW, history: { lastApplied: seen(list[0], ago(86400)) } })).toMatchObject({
      ruleIndex: 0,
    });
    expect(evaluate(list, KEYBOARD, { now: NOW, history: { lastEvaluated: seen(list[1], ago(60)) } })).toMatchObject({
      ruleIndex: 1,
    });
    expect(evaluate(list, KEYBOARD, { now: NOW, history: { lastEvaluated: seen(list[1], ago(61)) } })).toMatchObject({
      implicit: true,
    });
    expect(evaluate(list, KEYBOARD, { now: NOW, history: { lastApplied: seen(list[2], ago(30)) } })).toMatchObject({
      ruleIndex: 2,
    });
    expect(evaluate(list, KEYBOARD, { now: NOW, history: { lastApplied: seen(list[2], ago(31)) } })).toMatchObject({
      implicit: true,
    });
  });

  it.each([
    ['{ true false }', 'block'],
    ['{ true !false }', 'allow'],
    ['all-of { true false }', 'block'],
    ['all-of { true true }', 'allow'],
    ['equals-ordered { true !false }', 'allow'],
    ['match-all { true false }', 'block'],
    ['one-of { false true }', 'allow'],
    ['one-of { false !true }', 'block'],
    ['none-of { false !true }', 'allow'],
    ['none-of { false true }', 'block'],
  ])('condition set if %s → %s', (set, target) => {
    expect(decide(`allow if ${set}`)).toBe(target);
  });

  it('combines time windows with one-of', () => {
    const rule = 'allow if one-of { localtime(08:00-10:00) localtime(10:30-12:00) }';
    expect(decide(rule)).toBe('allow');
    expect(decide(rule, { now: new Date(2026, 10, 27, 10, 15) })).toBe('block');
  });
});
