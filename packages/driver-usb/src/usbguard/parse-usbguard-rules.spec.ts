import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DevgateError } from '@devgate/core';
import { RULE_CORPUS, type CorpusEntry } from './corpus/rules.js';
import { formatRule } from './format-usbguard-rules.js';
import { checkRules, parseRule, parseRuleLine, parseRulesFile } from './parse-usbguard-rules.js';
import { type Verdict, runUsbguard, usbguardVerdict } from './testing/usbguard-rule-parser.js';

function devgateVerdict(rule: string): Verdict {
  try {
    const parsed = parseRuleLine(rule);
    return { valid: true, output: parsed ? formatRule(parsed) : '', detail: '' };
  } catch (error) {
    if (error instanceof DevgateError && error.code === 'DG_RULE_SYNTAX')
      return { valid: false, detail: error.message };
    throw error;
  }
}

const title = (rule: string) => {
  const shown = JSON.stringify(rule);
  return shown.length > 90 ? `${shown.slice(0, 70)}... (${rule.length} chars)` : shown;
};

describe('devgate and usbguard-rule-parser agree on the corpus', () => {
  const results = new Map<CorpusEntry, { devgate: Verdict; usbguard: Verdict }>();

  beforeAll(() => {
    for (const entry of RULE_CORPUS) {
      results.set(entry, { devgate: devgateVerdict(entry.rule), usbguard: usbguardVerdict(entry.rule) });
    }
  });

  it('has at least 150 rules, valid and invalid, and only a handful of known USBGuard bugs', () => {
    expect(RULE_CORPUS.length).toBeGreaterThanOrEqual(150);
    expect(RULE_CORPUS.filter((e) => e.valid).length).toBeGreaterThanOrEqual(60);
    expect(RULE_CORPUS.filter((e) => !e.valid).length).toBeGreaterThanOrEqual(60);
    expect(RULE_CORPUS.filter((e) => e.usbguardDiffers).length).toBeLessThanOrEqual(6);
    expect(new Set(RULE_CORPUS.map((e) => e.rule)).size).toBe(RULE_CORPUS.length);
  });

  it('agrees on every rule outside the documented differences', () => {
    const disagreements = RULE_CORPUS.filter((e) => !e.usbguardDiffers).flatMap((entry) => {
      const r = results.get(entry);
      if (!r) return [];
      const same = r.devgate.valid === r.usbguard.valid && r.devgate.output === r.usbguard.output;
      return same ? [] : [{ rule: entry.rule.slice(0, 200), devgate: r.devgate, usbguard: r.usbguard }];
    });
    expect(disagreements).toEqual([]);
  });

  it.each(RULE_CORPUS.map((entry) => [title(entry.rule), entry] as const))('%s', (_title, entry) => {
    const r = results.get(entry);
    if (!r) throw new Error('not run');
    expect({ valid: r.devgate.valid, detail: r.devgate.detail }).toEqual({
      valid: entry.valid,
      detail: expect.any(String),
    });
    const differs = entry.usbguardDiffers;
    if (!differs) {
      expect(r.usbguard.valid).toBe(entry.valid);
      expect(r.devgate.output).toBe(r.usbguard.output);
    } else if (differs.kind === 'verdict') {
      // Still USBGuard's behaviour? If this fails, USBGuard changed: re-check the entry and the docs.
      expect(r.usbguard.valid).toBe(!entry.valid);
    } else {
      expect(r.usbguard.valid).toBe(true);
      expect(r.usbguard.output).not.toBe(r.devgate.output);
    }
  });
});

describe('parseRule', () => {
  it('builds the AST', () => {
    const rule = parseRule(
      'allow 046d:C52B serial "\\xff" with-interface none-of { 08:*:* e0:01:* } if one-of { !localtime(08:00-09:30:15) allowed-matches(name "K") }',
    );
    expect(rule).toEqual({
      target: 'allow',
      id: { operator: 'equals', values: [{ vendor: '046d', product: 'C52B' }] },
      serial: { operator: 'equals', values: ['\udcff'] },
      withInterface: {
        operator: 'none-of',
        values: [
          { bClass: 8, bSubClass: '*', bProtocol: '*' },
          { bClass: 0xe0, bSubClass: 1, bProtocol: '*' },
        ],
      },
      conditions: {
        operator: 'one-of',
        values: [
          { kind: 'localtime', negated: true, argument: '08:00-09:30:15', from: 8 * 3600, to: 9 * 3600 + 30 * 60 + 15 },
          {
            kind: 'allowed-matches',
            negated: false,
            argument: 'name "K"',
            query: { target: 'allow', name: { operator: 'equals', values: ['K'] } },
          },
        ],
      },
    });
  });

  it('decodes UTF-8 and keeps other bytes as lone surrogates', () => {
    expect(parseRule('allow name "\\xc3\\xa9\\xe2\\x82\\xac \\xc3"').name?.values).toEqual(['\u00e9\u20ac \udcc3']);
    expect(parseRule('allow name "\u{1f680}"').name?.values).toEqual(['\u{1f680}']);
  });

  it('reads the other conditions', () => {
    const conditions = parseRule('allow if { random random(0.1) rule-applied rule-evaluated(01:00:30) true(x) }')
      .conditions?.values;
    expect(conditions).toEqual([
      { kind: 'random', negated: false, probability: 0.5 },
      { kind: 'random', negated: false, argument: '0.1', probability: 0.1 },
      { kind: 'rule-applied', negated: false },
      { kind: 'rule-evaluated', negated: false, argument: '01:00:30', withinSeconds: 3630 },
      { kind: 'true', negated: false },
    ]);
  });

  it('loads a rules file usbguard-daemon loads: durations with a unit after the number (rule-evaluated(10s))', () => {
    const text = 'allow id 1d6b:*\nreject if rule-evaluated(10s)\nblock if !rule-applied(2min)\n';
    const rules = parseRulesFile(text, 'rules.conf');
    expect(rules.map((r) => r.conditions?.values[0])).toEqual([
      undefined,
      { kind: 'rule-evaluated', negated: false, argument: '10s', withinSeconds: 10 },
      { kind: 'rule-applied', negated: true, argument: '2min', withinSeconds: 2 },
    ]);
    expect(rules.map(formatRule)).toEqual([
      'allow id 1d6b:*',
      'reject if rule-evaluated(10s)',
      'block if !rule-applied(2min)',
    ]);
  });

  it.each([
    // The leading number is seconds, whatever follows (as in USBGuard: `10m` is not ten minutes).
    ['10s', 10],
    ['10m', 10],
    ['1e3', 1],
    ['007', 7],
    ['0', 0],
    // Not a clock time: read as seconds up to the first non-digit.
    ['25:00', 25],
    ['30:00:00', 30],
    // HH:MM, then whatever is left over is ignored; minutes stop where a digit would leave 0-59.
    ['3:4', 3 * 3600 + 4 * 60],
    ['00:30x', 30 * 60],
    ['1:60', 3600 + 6 * 60],
    ['12:345', 12 * 3600 + 34 * 60],
    [' 5:00', 5 * 3600],
    ['5:00: 7', 5 * 3600],
    // HH:MM:SS as written; the seconds may be any number.
    ['01:00:30', 3630],
    ['00:00:90', 90],
    ['01:02:03:04', 3723],
    // %s is a 64-bit time_t: it wraps, and must stay a date localtime() can represent.
    ['18446744073709551616', 0],
    ['9007199254740991', Number.MAX_SAFE_INTEGER],
  ])('reads the duration %j as %d seconds', (duration, seconds) => {
    expect(parseRule(`allow if rule-applied(${duration})`).conditions?.values[0]).toMatchObject({
      withinSeconds: seconds,
    });
  });

  it.each([['abc'], [' 5'], ['-5'], ['+5'], [':10'], ['67768036191676800']])('refuses the duration %j', (duration) => {
    expect(() => parseRule(`allow if rule-evaluated(${duration})`)).toThrow(/expected a duration/);
  });

  it.each([
    ['', 1, /empty rule/],
    ['allwo', 1, /expected a target .* got 'allwo'/],
    [' allow', 1, /may not start with whitespace/],
    ['allow ', 6, /trailing whitespace/],
    ['allow foo "x"', 7, /unknown attribute 'foo'/],
    ['allow name "a" name "b"', 16, /name attribute already defined/],
    ['allow id 1234', 10, /invalid device id/],
    ['allow id *:1234', 10, /vendor wildcard needs a product wildcard/],
    ['allow with-interface 03:*:01', 22, /subclass of '\*' the protocol must be '\*'/],
    ['allow name "abc', 12, /unterminated string/],
    ['allow name "\\n"', 13, /unsupported escape "\\\\n"/],
    ['allow name { }', 14, /empty set/],
    ['allow if nope', 10, /unknown condition 'nope'/],
    ['allow if localtime(25:00)', 10, /expected HH:MM/],
    ['allow if localtime(10:00', 19, /unterminated condition argument/],
    ['allow if allowed-matches(bad)', 10, /allowed-matches "bad": unknown attribute 'bad'/],
    ['allow name "é" foo', 16, /unknown attribute 'foo'/],
    ['allow 12:34', 7, /invalid device id/],
  ])('rejects %j at column %d', (text, column, what) => {
    let caught: unknown;
    try {
      parseRule(text);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(DevgateError);
    expect((caught as DevgateError).code).toBe('DG_RULE_SYNTAX');
    expect((caught as DevgateError).message).toMatch(new RegExp(`^<rule>:1:${column}: `));
    expect((caught as DevgateError).message).toMatch(what);
  });

  it('keeps control and bidi characters and long text out of messages', () => {
    for (const text of ['allow \u202e\u0007 "x"', 'allow if localtime(1\u202e)', `allow ${'x'.repeat(10000)}`]) {
      expect(() => parseRule(text)).toThrow(/^<rule>:1:\d+: [\x20-\x7e]{1,200}$/);
    }
  });

  it('refuses a comment where a rule is required, but parseRuleLine returns null', () => {
    expect(() => parseRule('# nothing')).toThrow(/expected a rule, got a comment/);
    expect(parseRuleLine('  # nothing')).toBeNull();
  });
});

describe('rules files', () => {
  const text = [
    '# /etc/usbguard/rules.conf',
    '',
    'allow id 1d6b:* # root hubs',
    'block with-interface one-of { 03:*:* }',
    '',
    'reject via-port "1-2"',
    '',
  ].join('\n');

  it('returns the rules with their line numbers and skips empty and comment lines', () => {
    const rules = parseRulesFile(text, 'rules.conf');
    expect(rules.map((r) => [r.source?.line, formatRule(r)])).toEqual([
      [3, 'allow id 1d6b:*'],
      [4, 'block with-interface one-of { 03:*:* }'],
      [6, 'reject via-port "1-2"'],
    ]);
    expect(rules[0].source).toEqual({ file: 'rules.conf', line: 3 });
  });

  it('throws the first error as file:line:column', () => {
    const bad = 'allow id 1234:5678\nblock name "x" name "y"\nallow id 12:34\n';
    expect(() => parseRulesFile(bad, '/etc/usbguard/rules.conf')).toThrow(
      '/etc/usbguard/rules.conf:2:16: name attribute already defined',
    );
  });

  it('checkRules collects every error and the good rules', () => {
    const result = checkRules('allow\nallow id 12:34\r\nblock\n  \nreject if maybe', 'r.conf');
    expect(result.rules.map((r) => `${r.source?.line} ${r.target}`)).toEqual(['1 allow', '3 block']);
    expect(result.errors.map((e) => `${e.line}:${e.column} ${e.message}`)).toEqual([
      "2:10 invalid device id: expected vvvv:pppp (4 hex digits or '*' each)",
      '4:1 a rule may not start with whitespace',
      "5:11 unknown condition 'maybe'",
    ]);
  });

  it('rejects CRLF line endings, like USBGuard', () => {
    expect(checkRules('allow\r\n', 'crlf.conf').errors).toHaveLength(1);
  });

  it('fails on the same line as usbguard-rule-parser -f (whose own line numbers are always 1)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usbguard-'));
    try {
      const file = path.join(dir, 'rules.conf');
      const lines = ['allow id 1234:5678', '# comment', 'block with-interface 03:*:*', 'allow id 1:2', 'allow'];
      fs.writeFileSync(file, `${lines.join('\n')}\n`);
      const { status, stdout } = runUsbguard(['-f', file]);
      expect(status).toBe(1);
      const outputs = [...stdout.matchAll(/^OUTPUT: (.*)$/gm)].map((m) => m[1]);
      const failedAt = [...stdout.matchAll(/^INPUT: /gm)].length;
      const { rules, errors } = checkRules(lines.join('\n'), file);
      expect(errors.map((e) => e.line)).toEqual([failedAt]);
      expect(outputs).toEqual(
        lines.slice(0, failedAt - 1).map((l) => (l.startsWith('#') ? '' : formatRule(parseRule(l)))),
      );
      expect(rules).toHaveLength(3);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
