import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Recording, loadRecording } from '@devgate/host';
import { recordedFixture } from '@devgate/testkit';
import { parseInputDevices } from './parse-input-devices';
import { parsePolicyText, type PolicySyntax } from './parse-input-policy';
import { decideInputDevice, evaluatePolicy, eventsGoingTo, installerDefaultPolicy, loadPolicy } from './input-policy';

/**
 * The corpus. Each line's expected verdict comes from Qubes' documented grammar:
 *   [M] qubes-core-qrexec doc/multifile-policy.markdown: the policy.d line, its token table (which token
 *       may stand as SRCQUBE, DSTQUBE, target=), parameters, `*` service needs `*` argument, comments,
 *       `!include`, `!include-dir`, `!include-service`, `!compat-4.0`;
 *   [O] qubes-core-qrexec doc/qrexec-policy.rst: the old per-service format (`$anyvm`, `$adminvm`,
 *       `$tag:`, `$dispvm:`, `$default`, `*`; allow, deny, ask and their parameters, `$include:`);
 *   [R] shared/reference/qubes-devices.md section 7: the input services' real policy lines;
 * and, where the documents say nothing, from the parser they describe, qrexec/policy/parser.py [P]
 * (the `dom0` alias, `*` as any domain, notify/autostart values, duplicate parameters, `@default`
 * with allow, the message wording).
 */
interface CorpusEntry {
  readonly line: string;
  readonly syntax?: PolicySyntax;
  /** undefined: valid. Else the message, and the column of the token at fault. */
  readonly error?: readonly [message: string | RegExp, column: number];
  readonly from: string;
}

const OLD: PolicySyntax = { format: 'qubes-rpc', service: 'qubes.InputMouse' };

const CORPUS: readonly CorpusEntry[] = [
  // -- valid policy.d lines
  { line: 'qubes.InputMouse * sys-usb dom0 ask default_target=dom0', from: '[R] installer, 50-config-input' },
  { line: 'qubes.InputKeyboard * sys-usb dom0 deny', from: '[R] installer' },
  { line: 'qubes.InputTablet * sys-usb dom0 deny', from: '[R] installer' },
  { line: 'qubes.InputMouse * sys-usb @adminvm ask', from: '[R] Global Config, InputDeviceHandler' },
  { line: 'qubes.InputMouse * sys-usb dom0 ask user=root default_target=sys-gui-gpu', from: '[R] 45-sys-gui-gpu' },
  { line: 'qubes.InputKeyboard * sys-usb dom0 allow user=root target=sys-gui-gpu', from: '[R] 45-sys-gui-gpu' },
  { line: '* * @anyvm @anyvm deny', from: '[M] * service with * argument' },
  { line: '*\t*\t@tag:work\t@type:AppVM\tallow', from: '[M] example line; tabs separate too' },
  {
    line: 'qubes.InputMouse +usb-0000_00_14.0-1+3-46d-c52b-111+ sys-usb dom0 allow',
    from: '[M] +ARGUMENT, [R] input-proxy-arg',
  },
  { line: 'qubes.InputMouse + sys-usb dom0 deny', from: '[M] a single + is the empty argument' },
  { line: 'qubes.InputMouse * @dispvm:sys-usb-dvm @adminvm allow', from: '[M] @dispvm:VMNAME as source' },
  { line: 'qubes.InputMouse * @dispvm:@tag:usb @default ask', from: '[M] @dispvm:@tag: source, @default target' },
  { line: 'qubes.InputMouse * sys-usb @default allow target=dom0', from: '[M] @default target with target=' },
  {
    line: 'qubes.InputMouse * sys-usb @dispvm ask target=@dispvm:usb-dvm',
    from: '[M] @dispvm target, @dispvm:NAME as target=',
  },
  { line: 'qubes.InputMouse * sys-usb dom0 deny notify=no', from: '[P] notify on deny' },
  { line: 'qubes.InputMouse * sys-usb dom0 allow autostart=no notify=yes', from: '[O] autostart=no, [P] notify' },
  { line: 'qubes.InputMouse * sys-usb $anyvm deny', from: '[P] no @: a domain name, even with $' },
  { line: '   # a comment, indented', from: '[M] comments may be preceded by whitespace' },
  { line: '', from: '[M] empty lines' },
  { line: '!include include/input', from: '[M] !include FILEPATH' },
  { line: '!include-service qubes.InputMouse * /etc/qubes-rpc/policy/qubes.InputMouse', from: '[M] !include-service' },
  { line: '!compat-4.0', from: '[M] compatibility statement' },

  // -- invalid policy.d lines
  { line: 'qubes.InputMouse * sys-usb dom0', error: ['wrong number of fields', 28], from: '[M] five fields at least' },
  {
    line: 'qubes.InputMouse sys-usb dom0 allow',
    error: ['wrong number of fields', 31],
    from: '[M] the argument column is mandatory',
  },
  {
    line: '* +arg sys-usb dom0 allow',
    error: ['only * argument allowed for * service', 3],
    from: '[M] for *, argument also has to be *',
  },
  {
    line: 'qubes.InputMouse arg sys-usb dom0 allow',
    error: ["argument 'arg' does not start with +", 18],
    from: '[M] +ARGUMENT',
  },
  {
    line: 'qubes.Input/Mouse * sys-usb dom0 allow',
    error: [/^service 'qubes.Input\/Mouse' contains invalid characters: '\/'$/, 1],
    from: '[P] qrexec service charset',
  },
  {
    line: 'qubes.InputMouse * @default dom0 allow',
    error: ["invalid source token: '@default'", 20],
    from: '[M] table: @default is no SRCQUBE',
  },
  {
    line: 'qubes.InputMouse * @dispvm dom0 allow',
    error: ["invalid source token: '@dispvm'", 20],
    from: '[M] table: @dispvm is no SRCQUBE',
  },
  {
    line: 'qubes.InputMouse * sys-usb @foo allow',
    error: ["invalid target token: '@foo'", 28],
    from: '[M] only the tokens of the table',
  },
  {
    line: 'qubes.InputMouse * @tag: dom0 allow',
    error: ["invalid empty @tag: token: '@tag:'", 20],
    from: '[P] @tag: needs a tag',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 permit',
    error: ["invalid action: 'permit'", 33],
    from: '[M] {allow|deny|ask}',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 ask,default_target=dom0',
    error: [/^invalid action: /, 33],
    from: '[M] commas no longer separate parameters',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 ask default_target',
    error: ["invalid action parameter syntax: 'default_target'", 37],
    from: '[M] PARAM=VALUE',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 allow default_target=dom0',
    error: ["invalid parameter for action allow: 'default_target=dom0'", 39],
    from: '[M] default_target only for ask',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 deny target=work',
    error: ["invalid parameter for action deny: 'target=work'", 38],
    from: '[M] params are for actions other than deny',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 ask user=root user=user',
    error: ["parameter given twice: 'user'", 47],
    from: '[P] a parameter once',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 allow target=@anyvm',
    error: ["invalid redirect token: '@anyvm'", 46],
    from: '[M] table: @anyvm is no target=',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 ask default_target=@tag:x',
    error: ["invalid redirect token: '@tag:x'", 52],
    from: '[M] table: @tag: is no target=',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 allow notify=maybe',
    error: ["'notify' is 'maybe', but can be only 'yes' or 'no'", 39],
    from: '[P] yes or no',
  },
  {
    line: 'qubes.InputMouse * sys-usb @default allow',
    error: ['allow action for @default rule must specify target= option', 37],
    from: '[P] allow to @default needs target=',
  },
  {
    line: 'qubes.InputMouse * sys-usb dom0 allow # inline',
    error: ["invalid action parameter syntax: '#'", 39],
    from: '[M] inline comments are not allowed',
  },
  { line: '!include', error: ['invalid number of params', 1], from: '[M] !include FILEPATH' },
  { line: '!compat-4.0 now', error: ['invalid number of params', 13], from: '[P] no params' },
  {
    line: '@include:foo',
    error: ['wrong number of fields', 1],
    from: '[M] @ was changed to !: @include is no directive',
  },
  { line: '!exclude foo', error: ['invalid directive', 1], from: '[M] only the listed directives' },

  // -- old per-service files (qubes.InputMouse)
  { line: '$anyvm $anyvm deny', syntax: OLD, from: '[R] the package default' },
  { line: 'sys-usb dom0 allow,user=root', syntax: OLD, from: '[R] R4.0 salt for sys-usb' },
  { line: 'sys-usb dom0 ask,default_target=dom0', syntax: OLD, from: '[R] #3722' },
  { line: 'sys-usb $adminvm allow', syntax: OLD, from: '[O] $adminvm' },
  { line: '$tag:usb $default ask', syntax: OLD, from: '[O] $tag:, $default' },
  { line: '* dom0 deny', syntax: OLD, from: '[O] * is any domain' },
  { line: '$include:/etc/qubes-rpc/policy/include/admin-local-rwx', syntax: OLD, from: '[O] $include:' },
  { line: 'sys-usb dom0', syntax: OLD, error: ['wrong number of fields', 9], from: '[O] three values' },
  { line: 'sys-usb dom0 maybe', syntax: OLD, error: ["invalid action: 'maybe'", 14], from: '[O] allow, deny or ask' },
  {
    line: 'sys-usb dom0 deny,target=work',
    syntax: OLD,
    error: ["invalid parameter for action deny: 'target=work'", 19],
    from: '[O] deny takes no parameters',
  },
  {
    line: '$default dom0 allow',
    syntax: OLD,
    error: ["invalid source token: '@default'", 1],
    from: '[O] $default is a target only',
  },
  {
    line: 'sys-usb $anyvm allow,target=$anyvm',
    syntax: OLD,
    error: ["invalid redirect token: '@anyvm'", 29],
    from: '[O] target= names a domain or $dispvm',
  },
];

describe('policy corpus: the same verdicts as Qubes’ grammar', () => {
  it.each(CORPUS.map((entry) => [`${entry.line || '(empty)'}  ${entry.from}`, entry] as const))(
    '%s',
    (_label, entry) => {
      const { issues } = parsePolicyText(entry.line, 'corpus.policy', entry.syntax);
      if (!entry.error) {
        expect(issues).toEqual([]);
        return;
      }
      expect(issues).toHaveLength(1);
      const [message, column] = entry.error;
      if (typeof message === 'string') expect(issues[0].message).toBe(message);
      else expect(issues[0].message).toMatch(message);
      expect({ line: issues[0].line, column: issues[0].column }).toEqual({ line: 1, column });
    },
  );

  it('keeps every column where it was in old files ($ -> @, commas -> spaces, $include: -> !include)', () => {
    const { issues } = parsePolicyText('sys-usb   $adminvm   allow,user=root,bogus', 'qubes.InputMouse', OLD);
    expect(issues).toEqual([
      { file: 'qubes.InputMouse', line: 1, column: 38, message: "invalid action parameter syntax: 'bogus'" },
    ]);
  });

  it('reports every bad line of a file, each with its line, and keeps the good ones', () => {
    const text = [
      '# input',
      'qubes.InputMouse * sys-usb dom0 ask',
      'qubes.InputKeyboard * sys-usb',
      'x * a b c',
      'qubes.InputTablet * sys-usb dom0 deny',
    ].join('\n');
    const { entries, issues } = parsePolicyText(text, 'in.policy');
    expect(issues.map((i) => `${i.line}:${i.column}`)).toEqual(['3:23', '4:9']);
    expect(entries).toHaveLength(2);
  });

  it('shows hostile bytes escaped in messages', () => {
    const { issues } = parsePolicyText('qubes.InputMouse * sys-usb dom0 \u001b[2Jallow', 'x.policy');
    expect(issues[0].message).toBe("invalid action: '\\x1b[2Jallow'");
  });
});

describe('evaluation, as qrexec evaluates', () => {
  const rules = (text: string) => parsePolicyText(text, '50-config-input.policy').entries as never;
  const domains = ['dom0', 'sys-usb', 'work', 'personal'];

  it('Qubes’ installer defaults for a USB qube: mouse ask, keyboard deny, tablet deny', () => {
    const policy = rules(installerDefaultPolicy('sys-usb'));
    const call = (service: string) =>
      evaluatePolicy(policy, { service, argument: '+x', source: 'sys-usb', target: 'dom0', domains });
    expect(call('qubes.InputMouse')).toMatchObject({ action: 'ask', candidates: ['dom0'], defaultTarget: 'dom0' });
    expect(call('qubes.InputKeyboard')).toMatchObject({
      action: 'deny',
      reason: 'denied by policy 50-config-input.policy:2',
    });
    expect(call('qubes.InputTablet')).toMatchObject({ action: 'deny' });
    // Another qube: no rule, so deny.
    expect(
      evaluatePolicy(policy, { service: 'qubes.InputMouse', argument: '+', source: 'work', target: 'dom0' }),
    ).toEqual({
      action: 'deny',
      reason: 'no matching rule found',
    });
  });

  it('first match wins; @anyvm is never dom0, * is; an argument rule matches that argument only', () => {
    const policy = rules(
      [
        'qubes.InputKeyboard +usb-1+3-1-1-1+ sys-usb dom0 allow',
        'qubes.InputKeyboard * sys-usb @anyvm allow',
        'qubes.InputKeyboard * sys-usb * ask',
      ].join('\n'),
    );
    const to = (target: string, argument = '+usb-2+3-1-1-1+') =>
      evaluatePolicy(policy, { service: 'qubes.InputKeyboard', argument, source: 'sys-usb', target, domains }).action;
    expect(to('dom0', '+usb-1+3-1-1-1+')).toBe('allow');
    expect(to('dom0')).toBe('ask');
    expect(to('work')).toBe('allow');
  });

  it('target= redirects an allow and fixes an ask’s only choice; @default needs it', () => {
    const policy = rules(
      [
        'qubes.InputMouse * sys-usb @default allow target=work',
        'qubes.InputMouse * sys-usb dom0 ask target=personal',
      ].join('\n'),
    );
    const to = (target: string) =>
      evaluatePolicy(policy, { service: 'qubes.InputMouse', argument: '+', source: 'sys-usb', target, domains });
    expect(to('')).toMatchObject({ action: 'allow', target: 'work' });
    expect(to('dom0')).toMatchObject({ action: 'ask', candidates: ['personal'] });
  });

  it('ask offers every target the policy would allow or ask for, minus the denied ones', () => {
    const policy = rules(
      ['qubes.InputMouse * sys-usb personal deny', 'qubes.InputMouse * sys-usb @anyvm ask'].join('\n'),
    );
    expect(
      evaluatePolicy(policy, {
        service: 'qubes.InputMouse',
        argument: '+',
        source: 'sys-usb',
        target: 'work',
        domains,
      }),
    ).toMatchObject({
      action: 'ask',
      candidates: ['work'],
    });
  });
});

describe('loading policy as qrexec does', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-policy-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads *.policy in C order, skips dot files and others, follows includes; old files come in through !compat-4.0', () => {
    const policyD = path.join(dir, 'policy.d');
    const compat = path.join(dir, 'qubes-rpc-policy');
    fs.mkdirSync(policyD);
    fs.mkdirSync(compat);
    fs.writeFileSync(path.join(policyD, '50-config-input.policy'), installerDefaultPolicy('sys-usb'));
    fs.writeFileSync(path.join(policyD, '35-compat.policy'), '!compat-4.0\n');
    fs.writeFileSync(path.join(policyD, '30-user.policy'), '!include include/usb\n');
    fs.mkdirSync(path.join(policyD, 'include'));
    fs.writeFileSync(path.join(policyD, 'include', 'usb'), 'qubes.InputTablet * sys-usb dom0 allow\n');
    fs.writeFileSync(path.join(policyD, '.30-user.policy.swp'), 'garbage');
    fs.writeFileSync(path.join(policyD, 'README'), 'not policy');
    fs.writeFileSync(path.join(compat, 'qubes.InputKeyboard'), 'sys-usb dom0 allow,user=root\n$anyvm $anyvm deny\n');
    fs.writeFileSync(path.join(compat, 'qubes.InputMouse+usb-1'), 'sys-usb dom0 allow\n');
    const loaded = loadPolicy({ dirs: [policyD], compatDir: compat });
    expect(loaded.issues).toEqual([]);
    expect(loaded.files.map((f) => path.relative(dir, f))).toEqual([
      'policy.d/30-user.policy',
      'policy.d/include/usb',
      'policy.d/35-compat.policy',
      'qubes-rpc-policy/qubes.InputKeyboard',
      'qubes-rpc-policy/qubes.InputMouse+usb-1',
      'policy.d/50-config-input.policy',
    ]);
    const verdict = (service: string, argument = '+') =>
      evaluatePolicy(loaded.rules, {
        service,
        argument,
        source: 'sys-usb',
        target: 'dom0',
        domains: ['dom0', 'sys-usb'],
      }).action;
    expect(verdict('qubes.InputTablet')).toBe('allow'); // 30-user's include comes first
    expect(verdict('qubes.InputKeyboard')).toBe('allow'); // the old file, before 50-config-input
    expect(verdict('qubes.InputMouse', '+usb-1')).toBe('allow');
    expect(verdict('qubes.InputMouse')).toBe('ask');
  });

  it('reports unreadable includes and invalid file names where they are', () => {
    fs.writeFileSync(path.join(dir, '10-a.policy'), '!include nothing-here\n');
    fs.writeFileSync(path.join(dir, '20-B.policy'), '');
    const loaded = loadPolicy({ dirs: [dir] });
    expect(loaded.issues.map((i) => `${path.basename(i.file)}:${i.line}: ${i.message.replace(dir, 'DIR')}`)).toEqual([
      '20-B.policy:0: invalid filename: 20-B.policy',
      '10-a.policy:1: cannot read DIR/nothing-here: ENOENT',
    ]);
  });
});

describe('one decision per physical device', () => {
  const recordings: Recording[] = [];
  afterAll(() => recordings.forEach((r) => r.dispose()));
  const devices = (name: string) => {
    const recording = loadRecording(recordedFixture(name));
    recordings.push(recording);
    return parseInputDevices(recording.tree, 'sys-usb');
  };
  const defaults = parsePolicyText(installerDefaultPolicy('sys-usb'), '50-config-input.policy').entries as never;

  it('a keyboard in sys-usb is denied with Qubes’ defaults', () => {
    const [keyboard] = devices('usbkbd.umockdev');
    const decision = decideInputDevice(defaults, keyboard, { source: 'sys-usb', target: 'dom0', domains: ['dom0'] });
    expect(decision).toMatchObject({ verdict: 'deny', events: [] });
    expect(decision.calls.map((c) => c.service)).toEqual(['qubes.InputKeyboard']);
  });

  it('a touchpad with a pointing stick asks once, for its mouse part; its tablet part stays denied', () => {
    const dell = devices('TOSHIBA_NVME.txt');
    const dll = dell.find((d) => d.port.portId === 'i2c-DLL07D1_01')!;
    const decision = decideInputDevice(defaults, dll, { source: 'sys-usb', target: 'dom0', domains: ['dom0'] });
    expect(decision.verdict).toBe('ask');
    expect(decision.candidates).toEqual(['dom0']);
    expect(decision.defaultTarget).toBe('dom0');
    expect(decision.events).toEqual(['event13']); // the pointing stick; the touchpad (event14) is a tablet call
    expect(decision.reason).toMatch(
      /qubes.InputMouse \(event13\): ask by policy .*; qubes.InputTablet \(event14\): denied/,
    );
  });

  it('sends each allowed call only where the policy allows it: one target per device, the others stay home', () => {
    // A receiver with a keyboard node and a mouse node; keyboards may go to sys-gui-gpu only, mice to work.
    const receiver = {
      data: { 'event-nodes': 'event1,event2', 'qubes-calls': 'qubes.InputKeyboard+a,qubes.InputMouse+a' },
    };
    const policy = parsePolicyText(
      'qubes.InputKeyboard * sys-usb dom0 allow target=sys-gui-gpu\nqubes.InputMouse * sys-usb dom0 allow target=work',
      'split.policy',
    ).entries as never;
    const decision = decideInputDevice(policy, receiver, { source: 'sys-usb', target: 'dom0' });
    expect(decision).toMatchObject({ verdict: 'allow', target: 'sys-gui-gpu', events: ['event1'] });
  });

  it('after a yes, only the calls asking for the answered target, or allowed there, go to it', () => {
    // Qubes' 45-sys-gui-gpu.policy shape: the keyboard is allowed to sys-gui-gpu alone, the mouse asks.
    const receiver = {
      data: { 'event-nodes': 'event1,event2', 'qubes-calls': 'qubes.InputKeyboard+a,qubes.InputMouse+a' },
    };
    const policy = parsePolicyText(
      'qubes.InputMouse * sys-usb dom0 ask\nqubes.InputKeyboard * sys-usb dom0 allow target=sys-gui-gpu',
      'gui.policy',
    ).entries as never;
    const decision = decideInputDevice(policy, receiver, { source: 'sys-usb', target: 'dom0', domains: ['dom0'] });
    expect(decision).toMatchObject({ verdict: 'ask', candidates: ['dom0'] });
    expect(eventsGoingTo(decision, 'dom0')).toEqual(['event2']);
    expect(eventsGoingTo(decision, 'sys-gui-gpu')).toEqual(['event1']);
  });

  it('never forwards the machine’s own devices (i8042, ACPI, platform), as Qubes’ proxy rules skip them', () => {
    const allow = parsePolicyText('* * @anyvm @anyvm allow\n* * @anyvm dom0 allow', 'allow.policy').entries as never;
    const keyboard = devices('TOSHIBA_NVME.txt').find((d) => d.port.portId === 'serio0')!;
    expect(decideInputDevice(allow, keyboard, { source: 'sys-usb', target: 'dom0' })).toMatchObject({
      verdict: 'deny',
      reason: expect.stringMatching(/^built into the machine/),
    });
    const touchscreen = devices('TOSHIBA_NVME.txt').find((d) => d.port.portId === '1-9')!;
    expect(decideInputDevice(allow, touchscreen, { source: 'sys-usb', target: 'dom0' })).toMatchObject({
      verdict: 'allow',
      events: ['event15'],
      target: 'dom0',
    });
  });
});
