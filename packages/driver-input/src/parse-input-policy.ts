/**
 * Qubes' qrexec policy, in both of its formats, read as Qubes reads them (the parser of
 * qubes-core-qrexec, `qrexec/policy/parser.py`; its documentation: `doc/multifile-policy.markdown` for
 * the policy.d format and its token table, `doc/qrexec-policy.rst` for the old per-service files):
 *
 *   policy.d (R4.1+)   `/etc/qubes/policy.d/NN-name.policy`, one rule a line:
 *                      SERVICE  ARGUMENT  SOURCE  TARGET  {allow|deny|ask} [PARAM=VALUE ...]
 *                      plus `!include FILE`, `!include-dir DIR`, `!include-service SERVICE ARG FILE`,
 *                      `!compat-4.0`.
 *   qubes-rpc (R4.0)   `/etc/qubes-rpc/policy/qubes.InputMouse[+ARG]`, the service (and argument) in the
 *                      file's name: SOURCE  TARGET  ACTION[,PARAM=VALUE...]; `$` tokens (`$anyvm`), and
 *                      `$include:FILE`. Qubes reads it by replacing `$include:` with `!include `, `$` with
 *                      `@` and `,` with a space, which keeps every column where it was.
 *
 * Every problem is reported with its file, line and column, and parsing goes on with the next line
 * (Qubes refuses the whole policy at the first error; a checker should show them all).
 */

export type PolicyAction = 'allow' | 'deny' | 'ask';

export interface PolicyParams {
  /** `target=`: where the call goes instead (allow, ask). */
  readonly target?: string;
  /** `default_target=`: preselected in the question (ask). */
  readonly defaultTarget?: string;
  readonly user?: string;
  readonly notify?: boolean;
  readonly autostart?: boolean;
}

export interface PolicyRule {
  /** undefined for `*`. */
  readonly service?: string;
  /** undefined for `*`; else starts with `+`. */
  readonly argument?: string;
  /** Tokens as Qubes normalizes them: `dom0` is `@adminvm`. */
  readonly source: string;
  readonly target: string;
  readonly action: PolicyAction;
  readonly params: PolicyParams;
  readonly file: string;
  readonly line: number;
}

export interface PolicyIssue {
  readonly file: string;
  readonly line: number;
  /** 1-based, of the token at fault. */
  readonly column: number;
  readonly message: string;
}

export type PolicyDirective =
  | { readonly kind: 'include' | 'include-dir'; readonly path: string; readonly file: string; readonly line: number }
  | {
      readonly kind: 'include-service';
      readonly service?: string;
      readonly argument?: string;
      readonly path: string;
      readonly file: string;
      readonly line: number;
    }
  | { readonly kind: 'compat-4.0'; readonly file: string; readonly line: number };

/** What one file says, in order: rules and the directives between them. */
export interface ParsedPolicyFile {
  readonly entries: readonly (PolicyRule | PolicyDirective)[];
  readonly issues: readonly PolicyIssue[];
}

export type PolicySyntax =
  | { readonly format: 'policy.d' }
  /** An old per-service file: the service and argument its name gives (`*` argument: none in the name). */
  | { readonly format: 'qubes-rpc'; readonly service?: string; readonly argument?: string };

/** Qrexec's RPCNAME_ALLOWED_CHARSET (`+` is not allowed in a service name). */
const RPC_NAME = /^[A-Za-z0-9._+-]*$/;
const MAX_LINE = 64 * 1024;
const MAX_LINES = 100_000;

interface Token {
  readonly text: string;
  readonly column: number;
}

class LineError extends Error {
  constructor(
    readonly column: number,
    message: string,
  ) {
    super(message);
  }
}

/** Where a token may stand (qrexec's Source, Target, Redirect classes). */
type Place = 'source' | 'target' | 'redirect';

/**
 * The token table of doc/multifile-policy.markdown, plus `*` (qrexec's WildcardVM: any domain, dom0
 * included; a source or target only):
 *   literal name, @adminvm: everywhere;  @anyvm, @tag:, @type:, @dispvm:@tag:: source, target;
 *   @default: target;  @dispvm: target, redirect;  @dispvm:NAME: everywhere.
 */
function checkToken(token: Token, place: Place): string {
  // Qubes' alias: dom0 is the admin VM wherever a domain is named.
  const text = token.text === 'dom0' ? '@adminvm' : token.text;
  const invalid = () => new LineError(token.column, `invalid ${place} token: ${shown(token.text)}`);
  if (text === '*') {
    if (place === 'redirect') throw invalid();
    return text;
  }
  if (!text.startsWith('@')) return text; // a domain name; Qubes does not check it further here
  const exact: Record<string, readonly Place[]> = {
    '@adminvm': ['source', 'target', 'redirect'],
    '@anyvm': ['source', 'target'],
    '@default': ['target'],
    '@dispvm': ['target', 'redirect'],
  };
  if (text in exact) {
    if (!exact[text].includes(place)) throw invalid();
    return text;
  }
  const prefixes: [string, readonly Place[]][] = [
    ['@dispvm:@tag:', ['source', 'target']],
    ['@dispvm:', ['source', 'target', 'redirect']],
    ['@tag:', ['source', 'target']],
    ['@type:', ['source', 'target']],
  ];
  for (const [prefix, places] of prefixes) {
    if (!text.startsWith(prefix)) continue;
    const value = text.slice(prefix.length);
    if (value === '') throw new LineError(token.column, `invalid empty ${prefix} token: ${shown(token.text)}`);
    if (value.startsWith('@')) continue; // part of a longer prefix, or invalid
    if (!places.includes(place)) throw invalid();
    return text;
  }
  throw invalid();
}

/** What Python's str.split() and str.strip() take for whitespace (Qubes splits lines with them). */
const PYTHON_SPACE = ' \\t\\n\\r\\v\\f\\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PYTHON_WORD = new RegExp(`[^${PYTHON_SPACE}]+`, 'g');
const PYTHON_SPACE_AT_ENDS = new RegExp(`^[${PYTHON_SPACE}]+|[${PYTHON_SPACE}]+$`, 'g');

function tokens(line: string): Token[] {
  const found: Token[] = [];
  for (const match of line.matchAll(PYTHON_WORD)) found.push({ text: match[0], column: (match.index ?? 0) + 1 });
  return found;
}

/** A token as messages show it: quoted, with anything unprintable escaped. */
export function shown(text: string): string {
  const escaped = text.replace(/[^\x20-\x7e]/gu, (c) => {
    const code = c.codePointAt(0)!;
    return code < 0x100
      ? `\\x${code.toString(16).padStart(2, '0')}`
      : code < 0x10000
        ? `\\u${code.toString(16).padStart(4, '0')}`
        : `\\U${code.toString(16).padStart(8, '0')}`;
  });
  return `'${escaped.length > 80 ? escaped.slice(0, 77) + '...' : escaped}'`;
}

function serviceAndArgument(service: Token, argument: Token): { service?: string; argument?: string } {
  const svc = service.text === '*' ? undefined : service.text;
  if (svc !== undefined && (!RPC_NAME.test(svc) || svc.includes('+'))) {
    const bad = [...new Set([...svc].filter((c) => !/[A-Za-z0-9._-]/.test(c)))].sort();
    throw new LineError(
      service.column,
      `service ${shown(svc)} contains invalid characters: ${bad.map(shown).join(', ')}`,
    );
  }
  const arg = argument.text === '*' ? undefined : argument.text;
  if (arg !== undefined) {
    if (!RPC_NAME.test(arg)) {
      const bad = [...new Set([...arg].filter((c) => !/[A-Za-z0-9._+-]/.test(c)))].sort();
      throw new LineError(
        argument.column,
        `argument ${shown(arg)} contains invalid characters: ${bad.map(shown).join(', ')}`,
      );
    }
    if (!arg.startsWith('+')) throw new LineError(argument.column, `argument ${shown(arg)} does not start with +`);
    if (svc === undefined) throw new LineError(argument.column, 'only * argument allowed for * service');
  }
  return { service: svc, argument: arg };
}

const ACTION_PARAMS: Record<PolicyAction, readonly string[]> = {
  allow: ['target', 'user', 'notify', 'autostart'],
  deny: ['notify'],
  ask: ['target', 'default_target', 'user', 'notify', 'autostart'],
};

function ruleOf(
  fields: { service?: string; argument?: string },
  source: Token,
  target: Token,
  action: Token,
  paramTokens: readonly Token[],
  file: string,
  line: number,
): PolicyRule {
  const src = checkToken(source, 'source');
  const dst = checkToken(target, 'target');
  if (action.text !== 'allow' && action.text !== 'deny' && action.text !== 'ask') {
    throw new LineError(action.column, `invalid action: ${shown(action.text)}`);
  }
  const verb: PolicyAction = action.text;
  const params: Record<string, string | boolean> = {};
  for (const param of paramTokens) {
    const eq = param.text.indexOf('=');
    if (eq < 0) throw new LineError(param.column, `invalid action parameter syntax: ${shown(param.text)}`);
    const key = param.text.slice(0, eq);
    const value = param.text.slice(eq + 1);
    if (key in params) throw new LineError(param.column, `parameter given twice: ${shown(key)}`);
    if (key === 'notify' || key === 'autostart') {
      if (value !== 'yes' && value !== 'no') {
        throw new LineError(param.column, `'${key}' is ${shown(value)}, but can be only 'yes' or 'no'`);
      }
      params[key] = value === 'yes';
    } else params[key] = value;
    if (!ACTION_PARAMS[verb].includes(key)) {
      throw new LineError(param.column, `invalid parameter for action ${verb}: ${shown(param.text)}`);
    }
    if (key === 'target' || key === 'default_target') {
      params[key] = checkToken({ text: value, column: param.column + eq + 1 }, 'redirect');
    }
  }
  if (dst === '@default' && verb === 'allow' && params.target === undefined) {
    throw new LineError(action.column, 'allow action for @default rule must specify target= option');
  }
  const result: Record<string, unknown> = {};
  if (params.target !== undefined) result.target = params.target;
  if (params.default_target !== undefined) result.defaultTarget = params.default_target;
  if (params.user !== undefined) result.user = params.user;
  if (params.notify !== undefined) result.notify = params.notify;
  if (params.autostart !== undefined) result.autostart = params.autostart;
  return { ...fields, source: src, target: dst, action: verb, params: result as PolicyParams, file, line };
}

/** Parses one policy file's text. Directives are returned in place for the loader to follow. */
export function parsePolicyText(
  text: string,
  file: string,
  syntax: PolicySyntax = { format: 'policy.d' },
): ParsedPolicyFile {
  const entries: (PolicyRule | PolicyDirective)[] = [];
  const issues: PolicyIssue[] = [];
  const lines = text.split('\n');
  if (lines.length > MAX_LINES) {
    return { entries, issues: [{ file, line: MAX_LINES + 1, column: 1, message: `more than ${MAX_LINES} lines` }] };
  }
  lines.forEach((raw, index) => {
    const lineNumber = index + 1;
    try {
      if (raw.length > MAX_LINE) throw new LineError(1, `line longer than ${MAX_LINE} characters`);
      let line = raw;
      const trimmed = line.replace(PYTHON_SPACE_AT_ENDS, '');
      if (trimmed === '' || trimmed.startsWith('#')) return;
      if (syntax.format === 'qubes-rpc') {
        // Qubes' compatibility substitutions; each keeps the length, so columns stay true.
        line = line.replaceAll('$include:', '!include ').replaceAll('$', '@').replaceAll(',', ' ');
      }
      const words = tokens(line);
      if (words[0].text.startsWith('!')) {
        entries.push(directive(words, syntax, file, lineNumber));
        return;
      }
      if (syntax.format === 'qubes-rpc') {
        if (words.length < 3) throw new LineError(words.at(-1)!.column, 'wrong number of fields');
        const [source, target, action, ...params] = words;
        entries.push(
          ruleOf(
            { service: syntax.service, argument: syntax.argument },
            source,
            target,
            action,
            params,
            file,
            lineNumber,
          ),
        );
        return;
      }
      if (words.length < 5) throw new LineError(words.at(-1)!.column, 'wrong number of fields');
      const [service, argument, source, target, action, ...params] = words;
      entries.push(ruleOf(serviceAndArgument(service, argument), source, target, action, params, file, lineNumber));
    } catch (error) {
      if (!(error instanceof LineError)) throw error;
      issues.push({ file, line: lineNumber, column: error.column, message: error.message });
    }
  });
  return { entries, issues };
}

function directive(words: readonly Token[], syntax: PolicySyntax, file: string, line: number): PolicyDirective {
  const [head, ...params] = words;
  const count = (n: number) => {
    if (params.length !== n) throw new LineError((params[n] ?? head).column, 'invalid number of params');
  };
  switch (syntax.format === 'qubes-rpc' && head.text !== '!include' ? '' : head.text) {
    case '!include':
      count(1);
      return syntax.format === 'qubes-rpc'
        ? {
            kind: 'include-service',
            service: syntax.service,
            argument: syntax.argument,
            path: params[0].text,
            file,
            line,
          }
        : { kind: 'include', path: params[0].text, file, line };
    case '!include-dir':
      count(1);
      return { kind: 'include-dir', path: params[0].text, file, line };
    case '!include-service': {
      count(3);
      const fields = serviceAndArgument(params[0], params[1]);
      return { kind: 'include-service', ...fields, path: params[2].text, file, line };
    }
    case '!compat-4.0':
      count(0);
      return { kind: 'compat-4.0', file, line };
    default:
      throw new LineError(head.column, 'invalid directive');
  }
}

/**
 * The service and argument an old per-service file's name gives (`qubes.InputMouse`,
 * `qubes.InputMouse+ARG`), as Qubes' compat loader reads them; undefined for a name that is none.
 */
export function serviceOfFileName(name: string): { service: string; argument?: string } | undefined {
  const plus = name.indexOf('+');
  const service = plus < 0 ? name : name.slice(0, plus);
  const argument = plus < 0 ? undefined : name.slice(plus);
  if (service === '' || !/^[A-Za-z0-9._-]+$/.test(service)) return undefined;
  if (argument !== undefined && !RPC_NAME.test(argument)) return undefined;
  return { service, argument };
}

export function isPolicyRule(entry: PolicyRule | PolicyDirective): entry is PolicyRule {
  return 'action' in entry;
}
