import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { LocalHostSource, loadRecording, rootsUnder } from '@devgate/host';
import { UNSAFE_CHARACTERS, materializeHost, recordedFixture, withUsbAuthorizationFiles } from '@devgate/testkit';
import { applyUsbPolicy, checkRules, parseRulesFile } from '@devgate/driver-usb';
import { type Io } from './io.js';
import { captureIo } from './test-io.js';
import { addUsbAuthorizationCommands } from './usb-command.js';

// The Kinesis keyboard host (usbkbd.umockdev) written out as a sysfs tree; the attributes
// authorization writes are regular files there.
const KEYBOARD = '/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2';

const dirs: string[] = [];
afterAll(() => dirs.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })));

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usbcli-'));
  dirs.push(dir);
  return dir;
}

function sysroot(recording = 'usbkbd.umockdev'): string {
  const dir = tempDir();
  const loaded = loadRecording(recordedFixture(recording));
  try {
    materializeHost(withUsbAuthorizationFiles(loaded.tree.devices()), dir);
  } finally {
    loaded.dispose();
  }
  return dir;
}

/** Runs `usb ARGS...` as the lead's runner would, capturing output; rejects with the thrown error. */
async function run(args: readonly string[]): Promise<{ out: string; err: string; notices: string }> {
  const captured = captureIo();
  const io = captured.io;
  const usb = new Command('usb').exitOverride().configureOutput({ writeOut: io.out, writeErr: io.err });
  addUsbAuthorizationCommands(usb, io);
  await usb.parseAsync([...args], { from: 'user' });
  return { out: captured.out(), err: captured.err(), notices: captured.notices() };
}

const read = (dir: string, devpath: string, attribute: string) =>
  fs.readFileSync(path.join(dir, 'sys', devpath, attribute), 'utf8').trim();

describe('devgate usb allow|block|reject', () => {
  it('writes authorized (block, allow) and remove (reject) of the device named by busid or backend:busid', async () => {
    const dir = sysroot();
    await run(['block', '--sysroot', dir, '1-1.5.4.2']);
    expect(read(dir, KEYBOARD, 'authorized')).toBe('0');
    const { notices } = await run(['allow', '--sysroot', dir, 'dom0:1-1.5.4.2']);
    expect(read(dir, KEYBOARD, 'authorized')).toBe('1');
    expect(notices).toBe('dom0:1-1.5.4.2: allowed\n');
    await run(['reject', '--sysroot', dir, '--backend', 'sys-usb', 'sys-usb:1-1.5.4.2']);
    expect(read(dir, KEYBOARD, 'remove')).toBe('1');
    // Root hubs are devices too.
    await run(['block', '--sysroot', dir, 'usb1']);
    expect(read(dir, '/devices/pci0000:00/0000:00:1a.0/usb1', 'authorized')).toBe('0');
  });

  it('with -p appends a rule pinning the device to --rules, which parses and decides it', async () => {
    const dir = sysroot();
    const rulesFile = path.join(tempDir(), 'rules.conf');
    fs.writeFileSync(rulesFile, 'allow id 1d6b:*'); // no final newline: the rule still goes on a line of its own
    const { notices } = await run(['allow', '-p', '--rules', rulesFile, '--sysroot', dir, '1-1.5.4.2']);
    const lines = fs.readFileSync(rulesFile, 'utf8').split('\n');
    expect(lines[0]).toBe('allow id 1d6b:*');
    expect(lines[1]).toMatch(
      /^allow id 05f3:0007 serial "" name "" hash "[^"]+" parent-hash "[^"]+" via-port "1-1\.5\.4\.2" with-interface \{ 03:01:01 03:00:00 \}$/,
    );
    expect(lines[2]).toBe('');
    const rules = parseRulesFile(lines.join('\n'), 'rules.conf');
    expect(rules).toHaveLength(2);
    // Applied to the host, that rule is the one that decides the keyboard.
    const tree = new LocalHostSource({ roots: rootsUnder(dir), hotplug: 'static' }).snapshot();
    const decisions = applyUsbPolicy(path.join(dir, 'sys'), tree, { rules }, { dryRun: true });
    expect(decisions.find((d) => d.device === '1-1.5.4.2')).toMatchObject({
      target: 'allow',
      ruleSource: 'rules.conf:2',
    });
    expect(notices).toContain(`appended to ${rulesFile}: allow id 05f3:0007`);

    await run(['block', '--permanent', '--rules', rulesFile, '--sysroot', dir, '1-1.5.4']);
    expect(fs.readFileSync(rulesFile, 'utf8').split('\n')[2]).toMatch(
      /^block id 05f3:0081 serial "" name "Kinesis Keyboard Hub" /,
    );
    // A new rules file is created private.
    const fresh = path.join(tempDir(), 'new.conf');
    await run(['reject', '-p', '--rules', fresh, '--sysroot', dir, '1-1']);
    expect(fs.statSync(fresh).mode & 0o777).toBe(0o600);
  });

  it('refuses bad device arguments, other backends, unknown devices and -p without --rules, with coded errors', async () => {
    const dir = sysroot();
    await expect(run(['allow', '--sysroot', dir, '1-1.5.4.2:1.0'])).rejects.toMatchObject({
      code: 'DG_BAD_DEVICE_ARGUMENT',
    });
    await expect(run(['allow', '--sysroot', dir, 'sys-usb:1-1.5.4.2'])).rejects.toMatchObject({
      code: 'DG_NO_SUCH_BACKEND',
      message: "no backend vm 'sys-usb'",
    });
    await expect(run(['allow', '--sysroot', dir, '1-1.5.4.9'])).rejects.toMatchObject({
      code: 'DG_UNKNOWN_DEVICE',
      message: "backend vm dom0 doesn't expose usb device '1-1.5.4.9'",
    });
    await expect(run(['allow', '-p', '--sysroot', dir, '1-1.5.4.2'])).rejects.toMatchObject({ code: 'DG_BAD_OPTION' });
    expect(read(dir, KEYBOARD, 'authorized')).toBe('1'); // nothing was written
    fs.rmSync(path.join(dir, 'sys', KEYBOARD, 'authorized'));
    await expect(run(['block', '--sysroot', dir, '1-1.5.4.2'])).rejects.toMatchObject({
      code: 'DG_USB_AUTHORIZATION_FAILED',
    });
  });
});

describe('devgate usb generate-policy', () => {
  it('prints one rule per device of a sysroot, with hashes from its descriptors, that parse back', async () => {
    const dir = sysroot();
    const { out } = await run(['generate-policy', '--sysroot', dir]);
    const lines = out.trimEnd().split('\n');
    expect(lines.map((l) => /via-port "([^"]+)"/.exec(l)![1])).toEqual([
      'usb1',
      '1-1',
      '1-1.5',
      '1-1.5.4',
      '1-1.5.4.2',
    ]);
    expect(lines.every((l) => l.startsWith('allow id ') && / hash "/.test(l))).toBe(true);
    expect(checkRules(out, 'out').errors).toEqual([]);
  });

  it('reads a recording too, and takes -t and -X', async () => {
    const { out } = await run([
      'generate-policy',
      '--recording',
      recordedFixture('KIOXIA_TransMemory.txt'),
      '-t',
      'block',
      '-X',
    ]);
    expect(out).toBe(
      'block id 30de:6544 serial "0022CFF6BD70C670E32160AA" name "TransMemory" via-port "1-1.1.2" with-interface 08:06:50\n',
    );
    const fido = await run(['generate-policy', '--recording', recordedFixture('fido2.umockdev')]);
    expect(fido.out).toContain('name "Security Key by Yubico" hash "');
    await expect(run(['generate-policy', '--recording', '/nonexistent/devgate.umockdev'])).rejects.toMatchObject({
      code: 'DG_RECORDING_UNREADABLE',
    });
  });

  it('keeps hostile descriptor strings inert in its output', async () => {
    const dir = sysroot();
    fs.writeFileSync(path.join(dir, 'sys', KEYBOARD, 'product'), 'Evil\u001b]0;pwned\u0007" via-port "9-9\n');
    fs.writeFileSync(
      path.join(dir, 'sys', KEYBOARD, 'serial'),
      Buffer.from([0x5c, 0x22, 0x0d, 0x0a, 0x9b, 0x32, 0x4a]),
    );
    const { out } = await run(['generate-policy', '--sysroot', dir]);
    expect(out.replace(/\n/g, '')).not.toMatch(UNSAFE_CHARACTERS);
    const line = out.split('\n').find((l) => l.includes('05f3:0007'))!;
    expect(line).toContain('serial "\\\\\\"\\x0d\\x0a\\x9b2J" name "Evil\\x1b]0;pwned\\x07\\" via-port \\"9-9"');
    const [rule] = parseRulesFile(line, 'x');
    expect(rule.viaPort!.values).toEqual(['1-1.5.4.2']);
    expect(rule.name!.values).toEqual(['Evil\u001b]0;pwned\u0007" via-port "9-9']);
  });
});

describe('devgate usb rules check', () => {
  it('prints every error as file:line:column and fails with DG_RULES_INVALID', async () => {
    const file = path.join(tempDir(), 'bad.conf');
    fs.writeFileSync(
      file,
      'allow id 1d6b:*\nallwo id 0951:1666\n# fine\nblock with-interface 03:*:01\nallow name "x\\q"\n',
    );
    let err = '';
    await expect(
      (async () => {
        let captured = '';
        const io: Io = {
          out: () => undefined,
          err: (t) => void (captured += t),
          isTTY: false,
          notice: () => undefined,
        };
        const usb = new Command('usb').exitOverride();
        addUsbAuthorizationCommands(usb, io);
        try {
          await usb.parseAsync(['rules', 'check', file], { from: 'user' });
        } finally {
          err = captured;
        }
      })(),
    ).rejects.toMatchObject({ code: 'DG_RULES_INVALID', message: `${file}: 3 invalid rules` });
    const lines = err.trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2:1: expected a target`));
    expect(lines[1]).toMatch(/:4:\d+: invalid interface type/);
    expect(lines[2]).toMatch(/:5:\d+: unsupported escape/);
  });

  it('passes a good file quietly, and reports an unreadable one', async () => {
    const file = path.join(tempDir(), 'good.conf');
    fs.writeFileSync(file, '# policy\nallow id 1d6b:*\nreject with-interface all-of { 08:*:* 03:00:* }\n');
    await expect(run(['rules', 'check', file])).resolves.toEqual({
      out: '',
      err: '',
      notices: `${file}: 2 rules, no errors\n`,
    });
    await expect(run(['rules', 'check', path.join(tempDir(), 'missing.conf')])).rejects.toMatchObject({
      code: 'DG_RULES_UNREADABLE',
    });
  });
});
