/**
 * Rules for comparing devgate's USBGuard parser with the real one (`usbguard-rule-parser`, 1.1.2):
 * parse-usbguard-rules.spec.ts feeds every entry to both and expects the same verdict and, for
 * valid rules, the same normalised text. Written for devgate: every target, attribute, operator and
 * condition, the escapes, whitespace and comment edge cases, and hostile input (control
 * characters, look-alike Unicode, very long lines, text that looks like a command-line option).
 *
 * `usbguardDiffers` marks the few entries where USBGuard 1.1.2 is wrong and devgate deliberately
 * is not; the spec checks that USBGuard still behaves as described, so a fixed USBGuard shows up.
 * docs/usbguard-rules.md explains each one.
 */

export interface CorpusEntry {
  readonly rule: string;
  /** devgate's verdict; USBGuard's too unless `usbguardDiffers` says otherwise. */
  readonly valid: boolean;
  readonly usbguardDiffers?: {
    /** `verdict`: USBGuard gives the opposite verdict. `output`: both accept, USBGuard prints other text. */
    readonly kind: 'verdict' | 'output';
    readonly why: string;
  };
}

const valid = (...rules: string[]): CorpusEntry[] => rules.map((rule) => ({ rule, valid: true }));
const invalid = (...rules: string[]): CorpusEntry[] => rules.map((rule) => ({ rule, valid: false }));

const HASH_A = 'l+Wx3uPzvP3ZMJcJ2Y9XWZ4pJV/pN0Rr5qQ4qHYcsJ0=';
const HASH_B = 'jEP/6WzviqdJ5VSeTUY8PatCNBKeaREvo2OqdplND/o=';

export const RULE_CORPUS: readonly CorpusEntry[] = [
  // -- targets
  ...valid('allow', 'block', 'reject', 'match', 'device'),
  ...valid('allow id 0951:1666', 'block id 1234:5678', 'reject id 046d:c52b', 'match name "Keyboard"'),
  ...valid(
    `device id 1d6b:0002 serial "0000:00:14.0" name "xHCI Host Controller" hash "${HASH_A}" parent-hash "${HASH_B}" via-port "usb1" with-interface 09:00:00 with-connect-type ""`,
  ),
  ...invalid('', 'allwo id 0951:1666', 'Allow', 'ALLOW', 'permit', 'deny id 1234:5678', 'allow block', 'allowed'),
  ...invalid('id 1234:5678', 'allow-all', 'allow:', 'allow,', 'reject!', 'allow id 1234:5678;block'),
  {
    rule: 'allowblock',
    valid: false,
    usbguardDiffers: {
      kind: 'verdict',
      why: 'USBGuard parses rules in a loop until the end of the input, so two targets glued together are two rules and the last wins: it prints "block"',
    },
  },

  // -- id: vvvv:pppp with * wildcards, bare after the target, sets
  ...valid('allow id *:*', 'allow id 1234:*', 'allow id ABCD:EF01', 'allow id abcd:ef01', 'allow id 0000:0000'),
  ...valid('allow id ffff:FFFF', 'allow 1234:5678', 'allow *:*', 'allow 046d:* name "x"', 'block 0781:5581 if true'),
  ...valid('allow id one-of { 1234:* *:* }', 'allow id { 1234:5678 8765:4321 }', 'allow id none-of { 0781:5581 }'),
  ...valid(
    'allow id equals { 1234:5678 }',
    'allow id equals-ordered { 1234:5678 }',
    'allow id match-all { 1234:5678 }',
  ),
  ...valid('allow id all-of { 1234:5678 }', 'allow id equals { 1234:5678 1111:2222 }'),
  ...invalid('allow id *:1234', 'allow id 12:34', 'allow id 1234', 'allow id 12345:5678', 'allow id 1234:56789'),
  ...invalid(
    'allow id g123:5678',
    'allow id :',
    'allow id *',
    'allow id',
    'allow id "1234:5678"',
    'allow id 1234 : 5678',
  ),
  ...invalid('allow id 0x1234:0x5678', 'allow id 1234:5678 id 1234:5678', 'allow 1234:5678 id 1234:5678'),
  ...invalid('allow name "x" 1234:5678', 'allow 1234:5678 1234:5678', 'allow *:1234', 'allow id 1234-5678'),
  ...invalid('allow id { 1234:5678 *:0001 }', 'allow id **:**'),

  // -- quoted attributes
  ...valid('allow name "DataTraveler 3.0"', 'allow serial "E0D55EA574F1E3C0A9B2"', `allow hash "${HASH_A}"`),
  ...valid(`allow parent-hash "${HASH_B}"`, 'allow via-port "1-2.1"', 'allow via-port "usb1"'),
  ...valid('allow with-connect-type "hotplug"', 'allow with-connect-type "hardwired"'),
  ...valid('allow with-connect-type "not used"', 'allow label "office keyboard"', 'allow name ""', 'allow serial ""'),
  ...valid('allow name { "a" "b" }', 'allow name one-of { "Keyboard" "Mouse" }', 'allow name { "" }'),
  ...valid('allow serial none-of { "" }', 'allow via-port one-of { "1-1" "1-2" "2-1" }'),
  ...valid('allow hash equals-ordered { "a" "b" }', 'allow with-connect-type one-of { "hotplug" "not used" }'),
  ...valid('allow label { "a" "b" }', 'allow label one-of { "kiosk" }', 'allow name "x" serial "y" label "z"'),
  ...invalid('allow name "x" name "y"', 'allow serial "x" serial "x"', 'allow hash "a" hash "b"'),
  ...invalid('allow parent-hash "a" parent-hash "b"', 'allow via-port "1-2" via-port "1-3"'),
  ...invalid('allow with-connect-type "a" with-connect-type "b"', 'allow name', 'allow name unquoted'),
  ...invalid("allow name 'single'", 'allow name {}', 'allow name { }', 'allow name {"a""b"}', 'allow name { "a" #c }'),
  ...invalid('allow name { "a"', 'allow name one-of{ "a" }', 'allow name one-of "a"', 'allow name any-of { "a" }'),
  ...invalid('allow name equals{ "a" }', 'allow name "x"label "y"', 'allow name"x"', 'allow NAME "x"'),
  ...invalid('allow key "x"', 'allow vendor "x"', 'allow name { "a" } }', 'allow name { { "a" } }'),
  {
    rule: 'allow label "a" label "b"',
    valid: false,
    usbguardDiffers: {
      kind: 'verdict',
      why: 'USBGuard 1.1.2 checks for a second label on the wrong keyword (serial), so it accepts it and prints label { "a" "b" }',
    },
  },

  // -- string escapes: only \" \\ and \xHH; everything else printable is kept, the rest becomes \xHH
  ...valid('allow name "a\\"b"', 'allow name "back\\\\slash"', 'allow name "\\x41\\x4a\\x4A"'),
  ...valid('allow name "\\x22\\x5c\\x00\\x7e\\x20"', 'allow name "\\xff\\x01\\x7f"', 'allow name "\\xe2\\x82\\xac"'),
  ...valid('allow name "\\xc3"', 'allow name "\\xc3\\xa9 and \\xed\\xa0\\x80"', 'allow name "quote \' single"'),
  ...valid('allow name "#not a comment"', 'allow name "{ not a set }"', 'allow name "(paren)"'),
  ...valid('allow name "tab\there"', 'allow name "a\u0001b\u007fc\u001b[31m"', 'allow name "é"'),
  ...valid('allow label "日本語 🚀"', 'allow name "Ω≈ç√ \u200b zero-width"', 'allow name "\u202eRTL override"'),
  ...valid('allow serial "  spaces  "', 'allow name "\\\\x41 is not an escape here"'),
  ...invalid('allow name "\\0"', 'allow name "\\n"', 'allow name "\\\'"', 'allow name "\\q"', 'allow name "\\x4"'),
  ...invalid('allow name "\\x4G"', 'allow name "\\u00e9"', 'allow name "\\101"', 'allow name "\\t"', 'allow name "\\'),
  ...invalid('allow name "abc', 'allow name "', 'allow name "a\\\\"b"', 'allow name "abc\\"', 'allow name "x""'),
  ...invalid('allow name "a\\\nb"', 'allow name "line\nbreak"', 'allow name "cr\rhere"'),

  // -- with-interface: cc:ss:pp
  ...valid('allow with-interface 03:01:01', 'allow with-interface 03:0A:FF', 'allow with-interface 08:*:*'),
  ...valid('allow with-interface 03:00:*', 'allow with-interface { 03:00:01 03:01:02 }'),
  ...valid('allow with-interface equals { 08:*:* }', 'reject with-interface all-of { 08:*:* 03:00:* }'),
  ...valid('allow with-interface match-all { 03:*:* }', 'allow with-interface none-of { e0:*:* }'),
  ...valid(
    'allow with-interface one-of { 02:*:* 0a:*:* }',
    'allow with-interface equals-ordered { 08:06:50 08:06:50 }',
  ),
  ...valid('allow with-interface { 03:00:01 03:00:01 }', 'allow with-interface FF:FF:FF'),
  ...invalid('allow with-interface 03:*:01', 'allow with-interface *:*:*', 'allow with-interface 3:01:01'),
  ...invalid('allow with-interface 03:00', 'allow with-interface 03:00:01:02', 'allow with-interface 0g:00:01'),
  ...invalid('allow with-interface "03:00:01"', 'allow with-interface { 03:00:01 } with-interface 08:*:*'),
  ...invalid('allow with-interface 0x03:00:01', 'allow with-interface 03', 'allow with-interface { 03:*:01 }'),

  // -- conditions
  ...valid('allow if true', 'allow if false', 'allow if !true', 'allow if !false'),
  ...valid('allow if localtime(10:00-12:00)', 'allow if localtime(08:00-17:30)', 'allow if localtime(23:59)'),
  ...valid('allow if localtime(9:5)', 'allow if localtime(00:00-23:59:59)', 'allow if localtime(00:00:00-00:00:10)'),
  ...valid('allow if !localtime(12:00-13:00)', 'allow if localtime(07:30-07:30)'),
  ...valid('allow if allowed-matches(id 1234:5678)', 'allow if allowed-matches(with-interface 03:*:*)'),
  ...valid('allow if !allowed-matches(with-interface 03:*:*)', 'allow if allowed-matches(name "a\\x41")'),
  ...valid('allow if allowed-matches(name "(x")', 'allow if allowed-matches(1234:5678)'),
  ...valid('allow if allowed-matches(# only a comment)', 'allow if allowed-matches(if true)'),
  ...valid('allow if allowed-matches(name "é")', 'allow if allowed-matches(id one-of { 1234:* 5678:* })'),
  ...valid(
    'allow if random',
    'allow if random(0.25)',
    'allow if random(0)',
    'allow if random(1)',
    'allow if random(.5)',
  ),
  ...valid('allow if rule-applied', 'allow if rule-applied(30)', 'allow if rule-applied(00:30)'),
  ...valid('allow if rule-applied(00:00:30)', 'allow if !rule-applied', 'allow if { true !false }'),
  ...valid('allow if one-of { localtime(08:00-12:00) localtime(13:00-17:00) }', 'allow if none-of { false }'),
  ...valid('allow if all-of { true true }', 'allow if equals { true }', 'allow if equals-ordered { true false }'),
  ...valid('allow if match-all { true }', 'allow if true(ignored)', 'allow if true("\\))', 'allow if false(\\x41)'),
  ...valid('allow id 1234:5678 if true#comment', 'allow if true #'),
  ...invalid('allow if', 'allow if !', 'allow if ! true', 'allow if !!true', 'allow if unknown', 'allow if TRUE'),
  ...invalid('allow if -x', 'allow if true if false', 'allow if localtime', 'allow if localtime()'),
  ...invalid('allow if localtime(24:00)', 'allow if localtime(09:00-08:00)', 'allow if localtime(-09:00)'),
  ...invalid('allow if localtime(noon)', 'allow if localtime(10:00', 'allow if allowed-matches'),
  ...invalid(
    'allow if allowed-matches()',
    'allow if allowed-matches(allow)',
    'allow if allowed-matches(id 1234:5678 )',
  ),
  ...invalid('allow if allowed-matches(name "a\\)")', 'allow if allowed-matches(name "a\\"b")'),
  ...invalid('allow if allowed-matches(bogus "x")', 'allow if allowed-matches(if allowed-matches(id 1234:5678\\))'),
  ...invalid('allow if random(abc)', 'allow if random(\\1)', 'allow if rule-applied()', 'allow if rule-applied(abc)'),
  ...invalid(
    'allow if true(\\q)',
    'allow if true(a\\x4)',
    'allow if { }',
    'allow if { true } ',
    'allow if one-of true',
  ),
  ...invalid('allow if true(x)(y)', 'allow if true_x', 'allow if (true)', 'allow if true(\nx)'),
  {
    rule: 'allow if localtime(10:00-11:00:00)',
    valid: true,
    usbguardDiffers: {
      kind: 'verdict',
      why: 'USBGuard reads HH:MM:SS with strptime("%H:%M:%s"), and %s is seconds since the epoch, so 11:00:00 becomes 00:00:00 and the range looks reversed',
    },
  },
  {
    rule: 'allow if localtime(10:60)',
    valid: false,
    usbguardDiffers: {
      kind: 'verdict',
      why: 'strptime stops after "6" (60 is not a minute) and USBGuard ignores the rest, so it accepts this as 10:06',
    },
  },
  {
    rule: 'allow if random(1.5)',
    valid: false,
    usbguardDiffers: {
      kind: 'verdict',
      why: 'USBGuard takes any number std::stod reads (1.5, -1, nan, "0.5abc") as a probability',
    },
  },
  // -- rule-applied(D) / rule-evaluated(D): USBGuard reads D with strptime("%H:%M:%s"), then "%H:%M",
  //    then "%s", and ignores what follows, so `10s` is 10 seconds; users' files rely on it.
  ...valid('allow if rule-applied(10s)', 'allow if rule-applied(10m)', 'allow if rule-applied(1h)'),
  ...valid('allow if rule-applied(10 s)', 'allow if rule-applied(10abc)', 'allow if rule-applied(1e3)'),
  ...valid('allow if rule-applied(5.5)', 'allow if rule-applied(0x10)', 'allow if rule-applied(007)'),
  ...valid('allow if rule-applied(0)', 'allow if rule-applied(25:00)', 'allow if rule-applied(24:00)'),
  ...valid('allow if rule-applied(30:00:00)', 'allow if rule-applied(1:60)', 'allow if rule-applied(12:345)'),
  ...valid('allow if rule-applied(3:4)', 'allow if rule-applied(00:00:90)', 'allow if rule-applied(01:02:03:04)'),
  ...valid('allow if rule-applied(5:00: 7)', 'allow if rule-applied( 5:00)', 'allow if rule-applied(\t5:00)'),
  ...valid('allow if rule-applied(1::2)', 'allow if rule-applied(1:)', 'allow if rule-applied(1:x)'),
  ...valid('allow if rule-applied(5\\))', 'allow if !rule-applied(2min)', 'allow if rule-applied(00:30x)'),
  ...valid('allow if rule-applied(67768036191676799)', 'allow if rule-applied(18446744073709551616)'),
  ...valid('allow if rule-applied(18378976033099810816)', 'allow if rule-applied(1:2:99999999999999999999)'),
  ...invalid('allow if rule-applied( 5)', 'allow if rule-applied(-5)', 'allow if rule-applied(+5)'),
  ...invalid('allow if rule-applied(:10)', 'allow if rule-applied(s10)', 'allow if rule-applied(\t5)'),
  ...invalid('allow if rule-applied(67768036191676800)', 'allow if rule-applied(9223372036854775807)'),
  ...invalid('allow if rule-applied(18378976033099810815)', 'allow if rule-evaluated(ten)'),
  {
    rule: 'reject if rule-evaluated(10s)',
    valid: true,
    usbguardDiffers: {
      kind: 'output',
      why: 'USBGuard 1.1.2 names the rule-evaluated condition "rule-applied" when it prints it',
    },
  },

  // -- whitespace and comments: blanks are spaces and tabs only; none at the start or the end
  ...valid('# comment', '#', '   # indented comment', '\t# tab comment', 'allow#c', 'allow # c', 'allow   # c'),
  ...valid('allow name "x" #c', 'allow name "x"#c', 'allow\tid\t1234:5678', 'allow  id   1234:5678   name "x"'),
  ...valid('allow id  one-of  { 1234:5678 }', 'allow id {1234:5678}', 'allow id {   1234:5678    }'),
  ...valid('allow id\t{\t1234:5678\t}', '# comment with "quotes", \\x escapes and a \u0001 control', '#\nallow'),
  ...valid('allow id 1234:5678 # c # d', 'allow with-interface { 03:00:01 }# tight', 'allow #c\nblock'),
  ...invalid(' allow', '\tallow', 'allow ', 'allow\t', 'allow id 1234:5678 ', '   ', 'allow\r', 'allow\nblock'),
  ...invalid('allow\u00a0id 1234:5678', 'allow\u3000id 1234:5678', 'allow\u0001', 'allow\u000bid 1234:5678'),
  ...invalid('ａｌｌｏｗ', 'аllow', 'allow id 1234:5678\r', '"allow"', '{ }', 'allow "x"'),

  // -- hostile input
  ...invalid('-x', '--help', '-f /etc/passwd', 'allow; rm -rf /', 'allow $(reboot)', 'allow `id`'),
  ...valid(`allow name "${'x'.repeat(20000)}"`, `allow serial "${'\\x41'.repeat(3000)}"`),
  ...valid(`allow via-port one-of { ${Array.from({ length: 500 }, (_, i) => `"1-${i}"`).join(' ')} }`),
  ...valid(`allow if { ${'true '.repeat(100)}}`, `allow${' '.repeat(5000)}id 1234:5678`),
  ...valid(`allow name "${'\u00e9\u4e2d\u{1f680}'.repeat(1000)}"`, `# ${'#'.repeat(10000)}`),
  ...invalid(`allow name "${'x'.repeat(30000)}`, `allow${' '.repeat(5000)}`, `allow if ${'!'.repeat(1000)}true`),
  ...invalid(`allow id ${'1'.repeat(10000)}`, `allow name { ${'"a" '.repeat(1000)}`),

  // -- whole rules in the shapes the man page and generate-policy use
  ...valid(
    'allow label "x" with-connect-type "hotplug" if true with-interface 03:00:01 via-port "1-1" parent-hash "p" hash "h" name "n" serial "s" id 1234:5678',
    'reject with-interface all-of { 03:00:01 03:01:01 } if !rule-applied',
    'allow id 1050:0011 name "Yubico Yubikey II" serial "0001234567" via-port "1-2" hash "044b5e168d40ee0245478416caf3d998"',
    'reject via-port "1-2"',
    'block id 0781:* if !localtime(08:00-18:00)',
    `allow id 0951:1666 serial "E0D55EA574F1E3C0A9B2" name "DataTraveler 3.0" hash "${HASH_A}" parent-hash "${HASH_B}" via-port "1-1" with-interface 08:06:50 with-connect-type ""`,
    'allow with-interface match-all { 03:*:* } if allowed-matches(id 046d:c52b)',
  ),
];
