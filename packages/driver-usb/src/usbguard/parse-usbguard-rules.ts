/**
 * USBGuard's rule language (usbguard-rules.conf(5)), as USBGuard 1.1.2 parses it:
 *
 *   rule      ::= target [ID] { attribute } [comment]      one rule per line
 *   target    ::= allow | block | reject | match | device
 *   attribute ::= NAME SP value | NAME SP [OPERATOR SP] "{" values "}"
 *   NAME      ::= id | serial | name | hash | parent-hash | via-port | with-interface
 *               | with-connect-type | label | if
 *   OPERATOR  ::= all-of | one-of | none-of | equals | equals-ordered | match-all
 *   comment   ::= [SP] "#" anything
 *
 * SP is one or more spaces or tabs, and nothing else is whitespace: a line may not start with
 * whitespace (unless it is a comment) or end with it (unless a comment follows). Values:
 *
 *   id              vvvv:pppp, 4 hex digits each (case kept), `*` for either; `*:pppp` is invalid
 *   with-interface  cc:ss:pp, 2 hex digits each; `cc:*:*` and `cc:ss:*` but not `cc:*:pp`
 *   if              [!]condition[(argument)]: allowed-matches(query), localtime(time[-time]),
 *                   true, false, random[(p)], rule-applied[(duration)], rule-evaluated[(duration)]
 *   the rest        "double-quoted", with the escapes \" \\ and \xHH only
 *
 * A condition's argument runs to the first `)` that is not escaped as `\)` and is kept as written
 * (USBGuard prints it back verbatim). Every attribute may appear once.
 *
 * Where USBGuard 1.1.2 accepts input by accident, devgate rejects it (docs/usbguard-rules.md lists
 * each case): two rules glued together (`allowblock` is read as `block`), a second `label`, and
 * loosely read condition arguments such as `localtime(10:60)`, which USBGuard takes as 10:06.
 * The durations of rule-applied(D) and rule-evaluated(D) are the exception: USBGuard reads their
 * leading number and ignores the rest (`10s`), users' files rely on it, and so devgate reads them
 * exactly as USBGuard does (parseDuration).
 *
 * This file only reads rules; printing them back as USBGuard does is format-usbguard-rules.ts.
 */
import { Errors } from '@devgate/core';
import { type AttributeKey, ATTRIBUTES } from './rule-attributes.js';
import { bytesToString, pushUtf8 } from './rule-strings.js';

export const USBGUARD_TARGETS = ['allow', 'block', 'reject', 'match', 'device'] as const;
/** `match` and `device` are for queries and device descriptions; only the others decide anything. */
export type UsbGuardTarget = (typeof USBGUARD_TARGETS)[number];

export const USBGUARD_SET_OPERATORS = ['all-of', 'one-of', 'none-of', 'equals', 'equals-ordered', 'match-all'] as const;
export type UsbGuardSetOperator = (typeof USBGUARD_SET_OPERATORS)[number];

/** A single value is the set `{ value }` with the default operator `equals`. */
export interface UsbGuardAttribute<T> {
  readonly operator: UsbGuardSetOperator;
  readonly values: readonly T[];
}

/** Hex digits as written (USBGuard keeps their case), or `*`. */
export interface UsbGuardDeviceId {
  readonly vendor: string;
  readonly product: string;
}

/** A subclass of `*` implies a protocol of `*`. */
export interface UsbGuardInterfaceType {
  readonly bClass: number;
  readonly bSubClass: number | '*';
  readonly bProtocol: number | '*';
}

interface ConditionBase {
  readonly negated: boolean;
  /** The text between the parentheses exactly as written, escapes included; absent without parentheses. */
  readonly argument?: string;
}

export type UsbGuardCondition =
  | (ConditionBase & { readonly kind: 'true' | 'false' })
  /** Seconds since midnight, both ends included; a single time is a one-second range. */
  | (ConditionBase & { readonly kind: 'localtime'; readonly from: number; readonly to: number })
  /** The argument read as a partial rule (attributes only, the target is `allow`). */
  | (ConditionBase & { readonly kind: 'allowed-matches'; readonly query: UsbGuardRule })
  | (ConditionBase & { readonly kind: 'random'; readonly probability: number })
  /** Without a duration: ever applied (evaluated); with one: within that many seconds. */
  | (ConditionBase & { readonly kind: 'rule-applied' | 'rule-evaluated'; readonly withinSeconds?: number });

export type UsbGuardConditionKind = UsbGuardCondition['kind'];

export interface UsbGuardRule {
  readonly target: UsbGuardTarget;
  readonly id?: UsbGuardAttribute<UsbGuardDeviceId>;
  readonly serial?: UsbGuardAttribute<string>;
  readonly name?: UsbGuardAttribute<string>;
  readonly hash?: UsbGuardAttribute<string>;
  readonly parentHash?: UsbGuardAttribute<string>;
  readonly viaPort?: UsbGuardAttribute<string>;
  readonly withInterface?: UsbGuardAttribute<UsbGuardInterfaceType>;
  readonly conditions?: UsbGuardAttribute<UsbGuardCondition>;
  readonly withConnectType?: UsbGuardAttribute<string>;
  /** Free text for people and tools; never used for matching. */
  readonly label?: UsbGuardAttribute<string>;
  /** Where the rule was read from, for audit messages. */
  readonly source?: { readonly file: string; readonly line: number };
}

export interface RuleSyntaxIssue {
  readonly file: string;
  readonly line: number;
  /** 1-based, in characters. */
  readonly column: number;
  readonly message: string;
}

export interface CheckRulesResult {
  readonly rules: UsbGuardRule[];
  readonly errors: RuleSyntaxIssue[];
}

/** USBGuard tries `equals-ordered` before `equals`, so a longer name always wins. */
const OPERATORS_BY_LENGTH = [...USBGUARD_SET_OPERATORS].sort((a, b) => b.length - a.length);

const CONDITION_KINDS: readonly UsbGuardConditionKind[] = [
  'allowed-matches',
  'localtime',
  'true',
  'false',
  'random',
  'rule-applied',
  'rule-evaluated',
];

// ---------------------------------------------------------------------------------------------
// Public API

/**
 * One line as `usbguard-rule-parser '<line>'` reads it: a rule, or null for a comment-only line.
 * An empty string is an error (there is no target), as it is for usbguard-rule-parser.
 * Throws DG_RULE_SYNTAX.
 */
export function parseRuleLine(text: string, where: { file?: string; line?: number } = {}): UsbGuardRule | null {
  const file = where.file ?? '<rule>';
  const line = where.line ?? 1;
  try {
    const rule = new LineParser(text, 0).parseLine();
    const located = where.file !== undefined || where.line !== undefined;
    return rule && located ? { ...rule, source: { file, line } } : rule;
  } catch (error) {
    throw asDevgateError(error, text, file, line);
  }
}

/** Exactly one rule; a comment or an empty string is an error. Throws DG_RULE_SYNTAX. */
export function parseRule(text: string, where: { file?: string; line?: number } = {}): UsbGuardRule {
  const rule = parseRuleLine(text, where);
  if (!rule) {
    throw Errors.ruleSyntax({
      file: where.file ?? '<rule>',
      line: where.line ?? 1,
      column: 1,
      what: 'expected a rule, got a comment',
    });
  }
  return rule;
}

/**
 * Every line of a rules file, as usbguard-daemon reads it: lines are split at `\n` only (a `\r` is
 * an error, as it is for USBGuard), and empty and comment-only lines hold no rule.
 */
export function checkRules(text: string, fileName: string): CheckRulesResult {
  const rules: UsbGuardRule[] = [];
  const errors: RuleSyntaxIssue[] = [];
  text.split('\n').forEach((lineText, index) => {
    if (lineText === '') return;
    const line = index + 1;
    try {
      const rule = new LineParser(lineText, 0).parseLine();
      if (rule) rules.push({ ...rule, source: { file: fileName, line } });
    } catch (error) {
      if (!(error instanceof SyntaxFailure)) throw error;
      errors.push({ file: fileName, line, column: columnOf(lineText, error.index), message: error.message });
    }
  });
  return { rules, errors };
}

/** The rules of a file, each with its line number; throws DG_RULE_SYNTAX for the first bad line. */
export function parseRulesFile(text: string, fileName: string): UsbGuardRule[] {
  const { rules, errors } = checkRules(text, fileName);
  if (errors.length > 0) {
    const first = errors[0];
    throw Errors.ruleSyntax({ file: first.file, line: first.line, column: first.column, what: first.message });
  }
  return rules;
}

// ---------------------------------------------------------------------------------------------
// The parser: one pass over one line, no backtracking beyond a single lookahead.

class SyntaxFailure extends Error {
  constructor(
    readonly index: number,
    message: string,
  ) {
    super(message);
  }
}

function asDevgateError(error: unknown, text: string, file: string, line: number): unknown {
  if (!(error instanceof SyntaxFailure)) return error;
  return Errors.ruleSyntax({ file, line, column: columnOf(text, error.index), what: error.message });
}

function columnOf(text: string, index: number): number {
  return Array.from(text.slice(0, index)).length + 1;
}

const isBlank = (c: string | undefined) => c === ' ' || c === '\t';
const isDigit = (c: string | undefined) => c !== undefined && c >= '0' && c <= '9';
/** A name made of letters, digits and dashes, quoted and cut for messages. */
const ident = (word: string) => `'${word.length > 40 ? `${word.slice(0, 40)}...` : word}'`;
/** Quoted for messages: anything but printable ASCII as \uXXXX (no raw control or bidi characters), cut. */
function show(text: string): string {
  const cut = text.length > 40 ? `${text.slice(0, 40)}...` : text;
  return JSON.stringify(cut).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Sticky, so reading a name does not copy the rest of a long line. */
const CONDITION_NAME = /[a-zA-Z-][a-zA-Z0-9-]*/y;

/** allowed-matches parses its argument as a rule; it cannot nest in practice, but stay bounded. */
const MAX_QUERY_DEPTH = 4;

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

class LineParser {
  private pos = 0;

  constructor(
    private readonly text: string,
    private readonly depth: number,
  ) {}

  parseLine(): UsbGuardRule | null {
    const { text } = this;
    if (text === '') this.fail(0, 'empty rule: expected a target (allow, block, reject, match or device)');
    const start = this.skipBlanks(0);
    if (text[start] === '#') return null; // a comment runs to the end of the line, whatever it holds
    if (start > 0) this.fail(0, 'a rule may not start with whitespace');

    const word = this.word(0, /[a-z]/);
    if (!(USBGUARD_TARGETS as readonly string[]).includes(word)) {
      const found = word === '' ? show(text.slice(0, 1)) : ident(word);
      this.fail(0, `expected a target (allow, block, reject, match or device), got ${found}`);
    }
    const rule: Mutable<UsbGuardRule> = { target: word as UsbGuardTarget };
    this.pos = word.length;

    let first = true;
    for (;;) {
      if (this.pos >= text.length || text[this.pos] === '#') break;
      if (!isBlank(text[this.pos])) {
        this.fail(this.pos, `expected whitespace, '#' or the end of the line, got ${show(text.slice(this.pos))}`);
      }
      const next = this.skipBlanks(this.pos);
      if (next >= text.length) this.fail(this.pos, 'trailing whitespace is not allowed (USBGuard rejects it too)');
      if (text[next] === '#') break;
      this.pos = next;
      if (first && /^(?:[0-9*]|[0-9A-Fa-f*]+:)/.test(text.slice(next, next + 6))) {
        // `allow 1234:5678` is short for `allow id 1234:5678`; no attribute name starts with a hex digit.
        rule.id = { operator: 'equals', values: [this.deviceId()] };
      } else {
        this.attribute(rule);
      }
      first = false;
    }
    return rule;
  }

  private attribute(rule: Mutable<UsbGuardRule>): void {
    const at = this.pos;
    const word = this.word(at, /[a-z-]/);
    const spec = ATTRIBUTES.find((a) => a.keyword === word);
    if (!spec) {
      const got = word === '' ? show(this.text.slice(at)) : ident(word);
      this.fail(at, `unknown attribute ${got}`);
    }
    if (rule[spec.key]) this.fail(at, `${word} attribute already defined`);
    this.pos = at + word.length;
    if (!isBlank(this.text[this.pos])) this.fail(this.pos, `expected whitespace and a value after '${word}'`);
    this.pos = this.skipBlanks(this.pos);

    const readValue = (): unknown => {
      switch (spec.value) {
        case 'id':
          return this.deviceId();
        case 'interface':
          return this.interfaceType();
        case 'condition':
          return this.condition();
        default:
          return this.quotedString();
      }
    };
    (rule as Record<AttributeKey, UsbGuardAttribute<unknown>>)[spec.key] = this.valueOrSet(word, readValue);
  }

  /** `value`, `{ v1 v2 ... }` or `operator { v1 v2 ... }`. */
  private valueOrSet<T>(keyword: string, readValue: () => T): UsbGuardAttribute<T> {
    const { text } = this;
    let operator: UsbGuardSetOperator = 'equals';
    let brace = -1;
    if (text[this.pos] === '{') {
      brace = this.pos;
    } else {
      const op = OPERATORS_BY_LENGTH.find((o) => text.startsWith(o, this.pos));
      if (op && isBlank(text[this.pos + op.length])) {
        const after = this.skipBlanks(this.pos + op.length);
        if (text[after] === '{') [operator, brace] = [op, after];
      }
    }
    if (brace < 0) return { operator, values: [readValue()] };

    this.pos = this.skipBlanks(brace + 1);
    if (text[this.pos] === '}') this.fail(this.pos, `empty set: '${keyword}' needs at least one value`);
    const values: T[] = [];
    for (;;) {
      if (this.pos >= text.length) this.fail(brace, `unterminated set: missing '}'`);
      values.push(readValue());
      const next = this.skipBlanks(this.pos);
      if (text[next] === '}') {
        this.pos = next + 1;
        return { operator, values };
      }
      if (next === this.pos) {
        this.fail(this.pos, `expected whitespace or '}' after a value, got ${show(text.slice(this.pos))}`);
      }
      if (next >= text.length) this.fail(brace, `unterminated set: missing '}'`);
      this.pos = next;
    }
  }

  private deviceId(): UsbGuardDeviceId {
    const at = this.pos;
    const part = (): string => {
      if (this.text[this.pos] === '*') {
        this.pos += 1;
        return '*';
      }
      const digits = this.text.slice(this.pos, this.pos + 4);
      if (!/^[0-9A-Fa-f]{4}$/.test(digits))
        this.fail(at, `invalid device id: expected vvvv:pppp (4 hex digits or '*' each)`);
      this.pos += 4;
      return digits;
    };
    const vendor = part();
    if (this.text[this.pos] !== ':') this.fail(at, `invalid device id: expected vvvv:pppp (4 hex digits or '*' each)`);
    this.pos += 1;
    const product = part();
    if (vendor === '*' && product !== '*')
      this.fail(at, `invalid device id '*:${product}': a vendor wildcard needs a product wildcard`);
    return { vendor, product };
  }

  private interfaceType(): UsbGuardInterfaceType {
    const at = this.pos;
    const bad = (): never =>
      this.fail(at, 'invalid interface type: expected cc:ss:pp (2 hex digits each; ss and pp may be *)');
    const part = (wildcard: boolean): number | '*' => {
      if (wildcard && this.text[this.pos] === '*') {
        this.pos += 1;
        return '*';
      }
      const digits = this.text.slice(this.pos, this.pos + 2);
      if (!/^[0-9A-Fa-f]{2}$/.test(digits)) bad();
      this.pos += 2;
      return parseInt(digits, 16);
    };
    const bClass = part(false) as number;
    if (this.text[this.pos] !== ':') bad();
    this.pos += 1;
    const bSubClass = part(true);
    if (this.text[this.pos] !== ':') bad();
    this.pos += 1;
    const bProtocol = part(true);
    if (bSubClass === '*' && bProtocol !== '*') {
      this.fail(at, "invalid interface type: with a subclass of '*' the protocol must be '*' too");
    }
    return { bClass, bSubClass, bProtocol };
  }

  /** `"..."`: raw characters except CR and LF, and the escapes \" \\ \xHH. */
  private quotedString(): string {
    const { text } = this;
    const open = this.pos;
    if (text[open] !== '"') this.fail(open, `expected a double-quoted string, got ${show(text.slice(open))}`);
    const bytes: number[] = [];
    let i = open + 1;
    for (;;) {
      if (i >= text.length) this.fail(open, "unterminated string: missing closing '\"'");
      const c = text[i];
      if (c === '"') break;
      if (c === '\n' || c === '\r') this.fail(i, 'line break inside a string');
      if (c === '\\') {
        const e = text[i + 1];
        if (e === '"' || e === '\\') {
          bytes.push(e.charCodeAt(0));
          i += 2;
        } else if (e === 'x') {
          const hex = text.slice(i + 2, i + 4);
          if (!/^[0-9A-Fa-f]{2}$/.test(hex)) this.fail(i, 'invalid escape: \\x must be followed by 2 hex digits');
          bytes.push(parseInt(hex, 16));
          i += 4;
        } else {
          const got = e === undefined ? 'a lone backslash' : show(`\\${e}`);
          this.fail(i, `unsupported escape ${got}: strings allow only \\" \\\\ and \\xHH`);
        }
        continue;
      }
      const cp = text.codePointAt(i) as number;
      pushUtf8(bytes, cp >= 0xd800 && cp <= 0xdfff ? 0xfffd : cp);
      i += cp > 0xffff ? 2 : 1;
    }
    this.pos = i + 1;
    return bytesToString(bytes);
  }

  private condition(): UsbGuardCondition {
    const { text } = this;
    const at = this.pos;
    const negated = text[at] === '!';
    const nameAt = negated ? at + 1 : at;
    CONDITION_NAME.lastIndex = nameAt;
    const name = CONDITION_NAME.exec(text)?.[0];
    if (!name) this.fail(nameAt, `expected a condition, got ${show(text.slice(nameAt))}`);
    this.pos = nameAt + name.length;
    let argument: string | undefined;
    if (text[this.pos] === '(') argument = this.conditionArgument();
    if (!(CONDITION_KINDS as readonly string[]).includes(name)) this.fail(nameAt, `unknown condition ${ident(name)}`);
    if (argument === '') this.fail(nameAt, `${name}(): empty argument (leave out the parentheses)`);
    return this.interpretCondition(name as UsbGuardConditionKind, negated, argument, nameAt);
  }

  /**
   * `(...)` up to the first unescaped `)`. USBGuard checks the escapes here but keeps them as written:
   * \xHH, \ and 1-3 digits, \a \b \f \n \r \t \v \\ \' \0, backslash-newline and \).
   */
  private conditionArgument(): string {
    const { text } = this;
    const open = this.pos;
    let i = open + 1;
    for (;;) {
      if (i >= text.length) this.fail(open, "unterminated condition argument: missing ')'");
      const c = text[i];
      if (c === ')') break;
      if (c === '\n' || c === '\r') this.fail(i, 'line break inside a condition argument');
      if (c === '\\') {
        const e = text[i + 1];
        if (e === 'x') {
          if (!/^[0-9A-Fa-f]{2}$/.test(text.slice(i + 2, i + 4))) {
            this.fail(i, 'invalid escape: \\x must be followed by 2 hex digits');
          }
          i += 4;
        } else if (isDigit(e)) {
          i += 2;
          for (let k = 0; k < 2 && isDigit(text[i]); k += 1) i += 1;
        } else if (e !== undefined && "abfnrtv\\'0\n)".includes(e)) {
          i += 2;
        } else {
          const got = e === undefined ? 'a lone backslash' : show(`\\${e}`);
          this.fail(i, `invalid escape ${got} in a condition argument`);
        }
        continue;
      }
      i += 1;
    }
    this.pos = i + 1;
    return text.slice(open + 1, i);
  }

  private interpretCondition(
    kind: UsbGuardConditionKind,
    negated: boolean,
    argument: string | undefined,
    at: number,
  ): UsbGuardCondition {
    const needArgument = (what: string): string => {
      if (argument === undefined) this.fail(at, `${kind} needs an argument: ${kind}(${what})`);
      return argument;
    };
    switch (kind) {
      case 'true':
      case 'false':
        // USBGuard ignores an argument here and prints the condition without it.
        return { kind, negated };
      case 'localtime': {
        const range = needArgument('HH:MM[:SS][-HH:MM[:SS]]');
        const dash = range.indexOf('-');
        const from = parseClock(dash < 0 ? range : range.slice(0, dash));
        const to = dash < 0 ? from : parseClock(range.slice(dash + 1));
        if (from === undefined || to === undefined) {
          this.fail(at, `localtime ${show(range)}: expected HH:MM[:SS] or HH:MM[:SS]-HH:MM[:SS] (24-hour clock)`);
        }
        if (from > to)
          this.fail(at, `localtime ${show(range)}: the range ends before it begins (it cannot span midnight)`);
        return { kind, negated, argument, from, to };
      }
      case 'allowed-matches': {
        const query = needArgument('attributes of a rule');
        if (this.depth >= MAX_QUERY_DEPTH) this.fail(at, 'allowed-matches nested too deeply');
        let rule: UsbGuardRule | null;
        try {
          rule = new LineParser(`allow ${query}`, this.depth + 1).parseLine();
        } catch (error) {
          if (!(error instanceof SyntaxFailure)) throw error;
          this.fail(at, `allowed-matches ${show(query)}: ${error.message}`);
        }
        return { kind, negated, argument: query, query: rule as UsbGuardRule };
      }
      case 'random': {
        if (argument === undefined) return { kind, negated, probability: 0.5 };
        const probability = /^(?:\d+(?:\.\d*)?|\.\d+)$/.test(argument) ? Number(argument) : NaN;
        if (!(probability >= 0 && probability <= 1)) {
          this.fail(at, `random ${show(argument)}: expected a probability between 0 and 1`);
        }
        return { kind, negated, argument, probability };
      }
      case 'rule-applied':
      case 'rule-evaluated': {
        if (argument === undefined) return { kind, negated };
        const withinSeconds = parseDuration(argument);
        if (withinSeconds === undefined) {
          this.fail(at, `${kind} ${show(argument)}: expected a duration: seconds, HH:MM or HH:MM:SS`);
        }
        return { kind, negated, argument, withinSeconds };
      }
    }
  }

  private word(at: number, char: RegExp): string {
    let end = at;
    while (end < this.text.length && char.test(this.text[end])) end += 1;
    return this.text.slice(at, end);
  }

  private skipBlanks(at: number): number {
    let i = at;
    while (isBlank(this.text[i])) i += 1;
    return i;
  }

  private fail(index: number, message: string): never {
    throw new SyntaxFailure(index, message);
  }
}

/**
 * The duration of rule-applied(D) / rule-evaluated(D) in seconds, read as USBGuard 1.1.2 reads it,
 * so every rules file usbguard-daemon loads loads here too. USBGuard tries glibc's
 * `strptime(D, "%H:%M:%s")`, then `"%H:%M"`, then `"%s"`, and ignores whatever follows the first
 * that matches:
 *  - `%H` and `%M` skip leading whitespace and read at most two digits, stopping early when another
 *    digit would leave the range (`1:60` reads as 1:06, then `0` is left over); hours 0-23,
 *    minutes 0-59;
 *  - `%s` reads one or more digits at once (no whitespace), wrapping as a 64-bit time_t does, and
 *    fails when localtime() cannot represent the result.
 * So `10s` is 10 seconds, and so is `10m` (the leading number), `25:00` is 25 seconds, and `abc`,
 * ` 5` and `-5` are errors. The value is the duration USBGuard's documentation describes:
 * HH:MM:SS as written, HH:MM, or SS seconds (USBGuard's own arithmetic differs by accident:
 * docs/usbguard-rules.md). A negative value (a wrapped `%s`) holds for nothing.
 */
export function parseDuration(text: string): number | undefined {
  const hm = (): [number, number, number] | undefined => {
    const h = strptimeNumber(text, 0, 23);
    if (!h || text[h[1]] !== ':') return undefined;
    const m = strptimeNumber(text, h[1] + 1, 59);
    return m && [h[0], m[0], m[1]];
  };
  const clock = hm();
  if (clock) {
    const [h, m, end] = clock;
    const s = text[end] === ':' ? strptimeSeconds(text, end + 1) : undefined;
    return h * 3600 + m * 60 + (s ?? 0);
  }
  return strptimeSeconds(text, 0);
}

/** glibc strptime's get_number: whitespace, then up to two digits while they stay within `max`. */
function strptimeNumber(text: string, from: number, max: number): [number, number] | undefined {
  let i = from;
  while (/^[ \t\n\v\f\r]$/.test(text[i] ?? '')) i += 1;
  if (!isDigit(text[i])) return undefined;
  let value = 0;
  let digits = 2;
  do {
    value = value * 10 + Number(text[i]);
    i += 1;
  } while (--digits > 0 && value * 10 <= max && isDigit(text[i]));
  return value <= max ? [value, i] : undefined;
}

/** The range of time_t values glibc's localtime() can turn into a date (its year is an int). */
const TIME_T_MIN = -67768040609740800n;
const TIME_T_MAX = 67768036191676799n;

/** glibc strptime's %s: digits into a 64-bit time_t, which must be a date localtime() can give. */
function strptimeSeconds(text: string, from: number): number | undefined {
  let i = from;
  if (!isDigit(text[i])) return undefined;
  let value = 0n;
  while (isDigit(text[i])) {
    value = BigInt.asIntN(64, value * 10n + BigInt(text[i]));
    i += 1;
  }
  return value >= TIME_T_MIN && value <= TIME_T_MAX ? Number(value) : undefined;
}

/** HH:MM or HH:MM:SS on a 24-hour clock (1 or 2 digits each), as seconds since midnight. */
function parseClock(text: string): number | undefined {
  const m = /^(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?$/.exec(text);
  if (!m) return undefined;
  const [h, min, s] = [Number(m[1]), Number(m[2]), m[3] === undefined ? 0 : Number(m[3])];
  if (h > 23 || min > 59 || s > 59) return undefined;
  return h * 3600 + min * 60 + s;
}
