import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { HostTree, type RawDeviceRecord } from '@devgate/core';
import { RecordedDevice, type Recording, loadRecording } from '@devgate/host';
import { HOSTILE_STRINGS, UNSAFE_CHARACTERS, recordedFixture, recordedFixturesDir } from '@devgate/testkit';
import { generatePolicy, generatePolicyRules } from './generate-policy';
import { evaluate, matchesDevice } from './usbguard/evaluate-rules';
import { formatRule } from './usbguard/format-usbguard-rules';
import { parseRulesFile } from './usbguard/parse-usbguard-rules';
import { type UsbGuardDeviceEntry, usbGuardDevices } from './usbguard-devices';

const NOW = { now: new Date('2026-01-01T12:00:00Z') };

const recordings = new Map<string, Recording>(
  fs
    .readdirSync(recordedFixturesDir())
    .filter((name) => name !== 'SOURCES.md' && !name.endsWith('.lsblk.json'))
    .sort()
    .map((name) => [name, loadRecording(recordedFixture(name))]),
);
afterAll(() => recordings.forEach((recording) => recording.dispose()));

const withUsb = [...recordings].filter(([, r]) => usbGuardDevices(r.tree).length > 0).map(([name]) => name);

/** parse(generate(tree)): one rule per device, and each device is decided by its own rule. */
function expectRoundTrip(tree: HostTree): { text: string; entries: UsbGuardDeviceEntry[] } {
  const entries = usbGuardDevices(tree);
  const text = generatePolicy(tree);
  const rules = parseRulesFile(text, 'generated.conf');
  expect(rules).toHaveLength(entries.length);
  expect(
    text
      .split('\n')
      .slice(0, -1)
      .map((line) => line.split(' ')[0]),
  ).toEqual(entries.map(() => 'allow'));
  entries.forEach((entry, i) => {
    expect(matchesDevice(rules[i], entry.device)).toBe(true);
    expect(evaluate(rules, entry.device, NOW)).toMatchObject({ target: 'allow', ruleIndex: i, implicit: false });
    // And it pins that device only: no other device of the host matches it.
    const others = entries.filter((other) => other !== entry && matchesDevice(rules[i], other.device));
    expect(others.map((o) => o.port)).toEqual([]);
  });
  return { text, entries };
}

describe('generatePolicy', () => {
  it('has recordings with USB devices to run on', () => {
    expect(withUsb).toEqual(
      expect.arrayContaining([
        'usbkbd.umockdev',
        'KIOXIA_TransMemory.txt',
        'SHUTTLE_DH170_WITH_USB_DISK.txt',
        'fido2.umockdev',
      ]),
    );
    expect(withUsb).not.toContain('synaptics-touchpad.umockdev');
  });

  it.each(withUsb)('round-trips on %s: parse(generate(tree)) matches every device it came from', (name) => {
    const { text, entries } = expectRoundTrip(recordings.get(name)!.tree);
    expect(UNSAFE_CHARACTERS.test(text.replace(/\n/g, ''))).toBe(false);
    // Hubs and root hubs are in it: with an implicit block, leaving one out would cut off its children.
    expect(entries.length).toBeGreaterThan(0);
  });

  it('writes what USBGuard would for the Kinesis keyboard: ids, strings, hash, parent-hash, port and interfaces', () => {
    const lines = generatePolicy(recordings.get('usbkbd.umockdev')!.tree).trimEnd().split('\n');
    // The keyboard has no string descriptors at all; its hub does.
    expect(lines[3]).toMatch(/^allow id 05f3:0081 serial "" name "Kinesis Keyboard Hub" hash /);
    expect(lines.map((l) => /via-port "([^"]+)"/.exec(l)![1])).toEqual([
      'usb1',
      '1-1',
      '1-1.5',
      '1-1.5.4',
      '1-1.5.4.2',
    ]);
    expect(lines[4]).toMatch(
      /^allow id 05f3:0007 serial "" name "" hash "[A-Za-z0-9+/]{43}=" parent-hash "[A-Za-z0-9+/]{43}=" via-port "1-1.5.4.2" with-interface \{ 03:01:01 03:00:00 \}$/,
    );
    // The keyboard's parent-hash is its hub's hash.
    const hash = (line: string, key: string) => new RegExp(` ${key} "([^"]+)"`).exec(line)![1];
    expect(hash(lines[4], 'parent-hash')).toBe(hash(lines[3], 'hash'));
  });

  it('leaves hashes out without descriptors (export-db dumps), and on request', () => {
    const kioxia = generatePolicy(recordings.get('KIOXIA_TransMemory.txt')!.tree);
    expect(kioxia).toBe(
      'allow id 30de:6544 serial "0022CFF6BD70C670E32160AA" name "TransMemory" via-port "1-1.1.2" with-interface 08:06:50\n',
    );
    const noHashes = generatePolicy(recordings.get('fido2.umockdev')!.tree, { withHashes: false, target: 'block' });
    expect(noHashes).not.toMatch(/hash/);
    expect(noHashes).toMatch(/^block id /);
  });

  it('agrees with usbguard-rule-parser: it reads every generated rule back to the same text', () => {
    const text = [...recordings.values()].map((r) => generatePolicy(r.tree)).join('');
    for (const line of text.trimEnd().split('\n')) {
      const result = spawnSync('usbguard-rule-parser', ['--', line], { env: { ...process.env, LC_ALL: 'C' } });
      expect({ status: result.status, out: result.stdout.toString('utf8') }).toEqual({
        status: 0,
        out: `INPUT: ${line}\nOUTPUT: ${line}\n`,
      });
    }
  });
});

describe('hostile descriptor strings stay inert and round-trip', () => {
  const PAYLOADS = [
    ...HOSTILE_STRINGS,
    'quote " and backslash \\ and \\" and \\\\" end',
    '\\x41 \\x22 \\n "\\',
    '" via-port "1-1" allow',
    '}{ with-interface 03:00:00 #',
    'tab\there and DEL\u007f and NUL\u0000 inside',
    'é ü 🙂 \u202e',
    '\u00ff\ufffd',
  ];
  const RAW_BYTES = [
    Uint8Array.from([0xff, 0xfe, 0x22, 0x5c, 0x00, 0x1b, 0x5b, 0x32, 0x4a]),
    Uint8Array.from([0xc3, 0x28]),
  ];

  function hostileHost(): HostTree {
    const root = '/devices/pci0000:00/0000:00:14.0/usb3';
    const records: RawDeviceRecord[] = [
      new RecordedDevice({
        devpath: root,
        subsystem: 'usb',
        properties: { DEVTYPE: 'usb_device' },
        attributes: { idVendor: '1d6b', idProduct: '0002', product: 'xHCI Host Controller' },
      }),
    ];
    const all: (string | Uint8Array)[] = [...PAYLOADS, ...RAW_BYTES];
    all.forEach((payload, i) => {
      const devpath = `${root}/3-${i + 1}`;
      const text = typeof payload === 'string' ? payload : undefined;
      records.push(
        new RecordedDevice({
          devpath,
          subsystem: 'usb',
          properties: { DEVTYPE: 'usb_device' },
          attributes: {
            idVendor: '1234',
            idProduct: '5678',
            ...(text !== undefined ? { serial: text, product: `${text}!` } : {}),
          },
          // Raw bytes, as sysfs would hand them over: not UTF-8 at all.
          binaryAttributes:
            typeof payload === 'string'
              ? undefined
              : new Map([
                  ['serial', payload],
                  ['product', payload],
                ]),
        }),
        new RecordedDevice({
          devpath: `${devpath}/3-${i + 1}:1.0`,
          subsystem: 'usb',
          properties: { DEVTYPE: 'usb_interface', INTERFACE: '8/6/80' },
        }),
      );
    });
    return new HostTree(records);
  }

  it('prints one safe line per device, which parses back to exactly the device’s strings', () => {
    const tree = hostileHost();
    const { text, entries } = expectRoundTrip(tree);
    const lines = text.trimEnd().split('\n');
    expect(lines).toHaveLength(1 + PAYLOADS.length + RAW_BYTES.length);
    for (const line of lines) {
      expect(line).not.toMatch(UNSAFE_CHARACTERS);
      expect(line).toMatch(/^[\x20-\x7e]+$/); // printable ASCII only
    }
    const rules = parseRulesFile(text, 'hostile.conf');
    entries.slice(1).forEach((entry, i) => {
      // Exactly the device's string, minus the trailing NUL/LF/CR/TAB/BS USBGuard trims, and bounded
      // like a sysfs read (the 100 000-character payload keeps its first 64 KiB).
      const expected = i < PAYLOADS.length ? PAYLOADS[i].replace(/[\0\n\r\t\b]+$/, '').slice(0, 64 * 1024) : undefined;
      if (expected !== undefined) expect(rules[i + 1].serial!.values[0] === expected).toBe(true);
      expect(rules[i + 1].serial!.values[0]).toBe(entry.device.serial);
      expect(rules[i + 1].name!.values[0]).toBe(entry.device.name);
      expect(rules[i + 1].viaPort!.values).toEqual([`3-${i + 1}`]);
      expect(formatRule(rules[i + 1])).toBe(lines[i + 1]);
    });
    // Raw bytes come back as the same bytes: \xff stays \xff, not U+FFFD.
    expect(lines.at(-2)).toContain('serial "\\xff\\xfe\\"\\\\\\x00\\x1b[2J"');
  });

  it('is read the same way by usbguard-rule-parser', () => {
    const lines = generatePolicy(hostileHost()).trimEnd().split('\n');
    for (const line of lines.filter((l) => l.length < 4000)) {
      const result = spawnSync('usbguard-rule-parser', ['--', line], { env: { ...process.env, LC_ALL: 'C' } });
      expect({ status: result.status, out: result.stdout.toString('utf8') }).toEqual({
        status: 0,
        out: `INPUT: ${line}\nOUTPUT: ${line}\n`,
      });
    }
  });

  it('generates rules whose attributes come only from the device (no injected attributes)', () => {
    const rules = generatePolicyRules(hostileHost());
    for (const rule of rules) {
      expect(Object.keys(rule).sort()).toEqual(expect.arrayContaining(['id', 'name', 'serial', 'target', 'viaPort']));
      expect(rule.conditions).toBeUndefined();
      expect(rule.viaPort!.values).toHaveLength(1);
    }
  });
});
