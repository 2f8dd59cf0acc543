import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { filter, firstValueFrom, take, timeout, toArray } from 'rxjs';
import { HostTree, sysname } from '@devgate/core';
import { LocalHostSource, RecordedDevice, type Recording, loadRecording, rootsUnder } from '@devgate/host';
import {
  UNSAFE_CHARACTERS,
  addDevice,
  materializeHost,
  recordedFixture,
  recordsUnder,
  withUsbAuthorizationFiles,
} from '@devgate/testkit';
import { generatePolicy } from './generate-policy';
import {
  type AuthorizationDecision,
  type UsbPolicy,
  UsbAuthorizer,
  applyUsbPolicy,
  authorizeUsbDevice,
  decideDevice,
  parseInterfaceRules,
} from './usb-authorization';
import { parseRulesFile } from './usbguard/parse-usbguard-rules';
import { sysfsAttributeBytes, usbGuardDevices } from './usbguard-devices';

// A recorded host written out as a sysfs tree (testkit's materializer). Sysfs attributes are
// regular files there, so the ones authorization writes are created as such: `authorized` (when the
// recording lacks it), `remove`, `authorized_default` on root hubs and `interface_authorized`.

const USB1 = '/devices/pci0000:00/0000:00:1a.0/usb1';
const HUB_1 = `${USB1}/1-1`;
const HUB_1_5 = `${HUB_1}/1-1.5`;
const KINESIS_HUB = `${HUB_1_5}/1-1.5.4`;
const KEYBOARD = `${KINESIS_HUB}/1-1.5.4.2`;

const dirs: string[] = [];
const recordings: Recording[] = [];
afterAll(() => {
  dirs.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true }));
  recordings.forEach((r) => r.dispose());
});

function recording(name: string): Recording {
  const loaded = loadRecording(recordedFixture(name));
  recordings.push(loaded);
  return loaded;
}

function host(name: string): { dir: string; sys: string; source: LocalHostSource } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usbauth-'));
  dirs.push(dir);
  materializeHost(withUsbAuthorizationFiles(recording(name).tree.devices()), dir);
  return {
    dir,
    sys: path.join(dir, 'sys'),
    source: new LocalHostSource({ roots: rootsUnder(dir), hotplug: 'static' }),
  };
}

const read = (sys: string, devpath: string, attribute: string) =>
  fs.readFileSync(path.join(sys, devpath, attribute), 'utf8').trim();

const rules = (text: string, file = 'rules.conf') => parseRulesFile(text, file);

/** Hubs: every interface a hub interface (the Lenovo hub has two alternate settings). */
const HUBS = 'allow with-interface match-all { 09:*:* }';

describe('applyUsbPolicy on a materialized recording (usbkbd.umockdev)', () => {
  it('writes authorized for every device, sets controllers to start new devices blocked, and records each decision', () => {
    const { sys, source } = host('usbkbd.umockdev');
    const policy: UsbPolicy = { rules: rules(`${HUBS}\nblock id 05f3:0007\n`) };
    const seen: AuthorizationDecision[] = [];
    const decisions = applyUsbPolicy(sys, source.snapshot(), policy, { onDecision: (d) => seen.push(d) });
    expect(seen).toEqual(decisions);

    expect(decisions.map((d) => [d.kind, d.device, d.target, d.attribute, d.value, d.applied])).toEqual([
      ['controller', 'usb1', 'block', 'authorized_default', '0', true],
      ['device', '1-1', 'allow', 'authorized', '1', true],
      ['device', '1-1.5', 'allow', 'authorized', '1', true],
      ['device', '1-1.5.4', 'allow', 'authorized', '1', true],
      ['device', '1-1.5.4.2', 'block', 'authorized', '0', true],
    ]);
    expect(read(sys, USB1, 'authorized_default')).toBe('0');
    expect(read(sys, USB1, 'authorized')).toBe('1'); // the controller itself is kept
    for (const hub of [HUB_1, HUB_1_5, KINESIS_HUB]) expect(read(sys, hub, 'authorized')).toBe('1');
    expect(read(sys, KEYBOARD, 'authorized')).toBe('0');
    expect(read(sys, KEYBOARD, 'remove')).toBe('');

    const keyboard = decisions.at(-1)!;
    expect(keyboard).toMatchObject({
      rule: 'block id 05f3:0007',
      ruleSource: 'rules.conf:2',
      reason: 'matched rule rules.conf:2',
      description: expect.stringMatching(
        /^device id 05f3:0007 serial "" name "" hash "[^"]+" parent-hash "[^"]+" via-port "1-1\.5\.4\.2" with-interface \{ 03:01:01 03:00:00 \}$/,
      ),
    });
    expect(decisions[1]).toMatchObject({
      rule: 'allow with-interface match-all { 09:*:* }',
      reason: 'matched rule rules.conf:1',
    });
  });

  it('rejects by writing remove, and applies the implicit target when no rule matches', () => {
    const { sys, source } = host('usbkbd.umockdev');
    const decisions = applyUsbPolicy(sys, source.snapshot(), {
      rules: rules(`reject id 05f3:0007\n${HUBS}\n`),
      implicitTarget: 'block',
    });
    expect(read(sys, KEYBOARD, 'remove')).toBe('1');
    expect(read(sys, KEYBOARD, 'authorized')).toBe('1'); // left as it was: the device is gone
    expect(decisions.find((d) => d.device === '1-1.5.4.2')).toMatchObject({
      target: 'reject',
      attribute: 'remove',
      value: '1',
    });

    const implicit = applyUsbPolicy(sys, source.snapshot(), { rules: [], implicitTarget: 'block' });
    expect(implicit.filter((d) => d.kind === 'device').map((d) => [d.device, d.target, d.rule, d.reason])).toEqual(
      ['1-1', '1-1.5', '1-1.5.4', '1-1.5.4.2'].map((port) => [
        port,
        'block',
        undefined,
        'no rule matched: implicit target block',
      ]),
    );
    for (const devpath of [HUB_1, KEYBOARD]) expect(read(sys, devpath, 'authorized')).toBe('0');
  });

  it('leaves authorized_default alone when the implicit target is allow', () => {
    const { sys, source } = host('usbkbd.umockdev');
    const decisions = applyUsbPolicy(sys, source.snapshot(), { rules: [], implicitTarget: 'allow' });
    expect(decisions.some((d) => d.kind === 'controller')).toBe(false);
    expect(read(sys, USB1, 'authorized_default')).toBe('1');
    expect(read(sys, KEYBOARD, 'authorized')).toBe('1');
  });

  it('allows exactly the devices of a generated policy, pinned by their hashes', () => {
    const { sys, source } = host('usbkbd.umockdev');
    const tree = source.snapshot();
    // On a live tree the hashes come from sysfs' own (binary) descriptors files.
    const text = generatePolicy(tree, { bytes: sysfsAttributeBytes(sys) });
    expect(text).toMatch(/ hash "/);
    const decisions = applyUsbPolicy(sys, tree, { rules: rules(text) });
    expect(decisions.filter((d) => d.kind === 'device').every((d) => d.target === 'allow')).toBe(true);

    // A device that presents other descriptors (a BadUSB clone of the keyboard) no longer matches.
    const forged = text.replace(/ hash "[^"]+"( parent-hash "[^"]+" via-port "1-1\.5\.4\.2")/, ' hash "AAAA"$1');
    expect(forged).not.toBe(text);
    const again = applyUsbPolicy(sys, tree, { rules: rules(forged) });
    expect(again.find((d) => d.device === '1-1.5.4.2')).toMatchObject({
      target: 'block',
      reason: 'no rule matched: implicit target block',
    });
    expect(read(sys, KEYBOARD, 'authorized')).toBe('0');
  });

  it('authorizes interfaces one by one for an allowed device (interface_authorized)', () => {
    const { sys, source } = host('usbkbd.umockdev');
    const decisions = applyUsbPolicy(sys, source.snapshot(), {
      rules: rules(`${HUBS}\nallow id 05f3:0007\n`),
      interfaceRules: parseInterfaceRules('# no keyboards\nblock 03:*:*\n'),
    });
    expect(read(sys, KEYBOARD, 'authorized')).toBe('1');
    expect(read(sys, `${KEYBOARD}/1-1.5.4.2:1.0`, 'interface_authorized')).toBe('0');
    expect(decisions.filter((d) => d.kind === 'interface')).toEqual([
      expect.objectContaining({
        device: '1-1.5.4.2:1.0',
        target: 'block',
        rule: 'block with-interface 03:*:*',
        attribute: 'interface_authorized',
        value: '0',
        applied: true,
      }),
    ]);
    expect(() => parseInterfaceRules('block 03:*:01')).toThrow(expect.objectContaining({ code: 'DG_RULE_SYNTAX' }));
  });

  it('reports a write that fails (no such attribute) instead of pretending, and never creates files', () => {
    const { sys, source } = host('usbkbd.umockdev');
    fs.rmSync(path.join(sys, KEYBOARD, 'authorized'));
    const decisions = applyUsbPolicy(sys, source.snapshot(), { rules: rules(HUBS) });
    expect(decisions.at(-1)).toMatchObject({
      device: '1-1.5.4.2',
      target: 'block',
      applied: false,
      error: {
        code: 'DG_USB_AUTHORIZATION_FAILED',
        message: 'cannot write authorized of USB device 1-1.5.4.2: ENOENT',
      },
    });
    expect(fs.existsSync(path.join(sys, KEYBOARD, 'authorized'))).toBe(false);
    expect(() => authorizeUsbDevice(sys, KEYBOARD, 'allow')).toThrow(
      expect.objectContaining({ code: 'DG_USB_AUTHORIZATION_FAILED' }),
    );
  });
});

describe('hashes that are not there (udevadm export-db dumps have no descriptors)', () => {
  it('blocks, with DG_USB_HASH_UNAVAILABLE, a device only a hash rule could decide; other rules still decide', () => {
    const { sys, source } = host('SHUTTLE_DH170_WITH_USB_DISK.txt');
    const decisions = applyUsbPolicy(sys, source.snapshot(), {
      rules: rules('allow id 0461:0010 hash "abc"\nallow id 05e3:0727\nallow id 1234:5678 hash "x"\n'),
      implicitTarget: 'allow',
    });
    const byPort = new Map(decisions.map((d) => [d.device, d]));
    expect(byPort.get('1-9')).toMatchObject({
      target: 'block',
      applied: true,
      error: {
        code: 'DG_USB_HASH_UNAVAILABLE',
        message: 'cannot decide 1-9: rule rules.conf:1 matches on hash, which is unknown (no descriptors recorded)',
      },
    });
    expect(byPort.get('1-14')).toMatchObject({ target: 'allow', reason: 'matched rule rules.conf:2' });
    // The third rule cannot match 1-4 whatever its hash: it does not get in the way.
    expect(byPort.get('1-4')).toMatchObject({ target: 'allow', reason: 'no rule matched: implicit target allow' });
    expect(read(sys, '/devices/pci0000:00/0000:00:14.0/usb1/1-9', 'authorized')).toBe('0');
  });
});

describe('decideDevice with a hash known and a parent hash unknown', () => {
  // The trackball of USBGuard's test devices, recorded without its hub.
  const trackball = new RecordedDevice({
    devpath: '/devices/pci0000:00/0000:00:14.0/usb1/1-4/1-4.2',
    subsystem: 'usb',
    properties: { DEVTYPE: 'usb_device' },
    attributes: { idVendor: '047d', idProduct: '2048', product: 'Kensington Eagle Trackball' },
    binaryAttributes: new Map([
      [
        'descriptors',
        Buffer.from(
          '12010002000000087D04482000060102000109022200010100A0320904000001030102000921110100012252000705810308000A',
          'hex',
        ),
      ],
    ]),
  });
  const [entry] = usbGuardDevices(new HostTree([trackball]));
  const decide = (text: string) => decideDevice(entry, { rules: rules(text) }, { now: new Date() });

  it('still checks the hash it has, and fails closed only when the unknown parent hash would decide', () => {
    expect(entry.device.hash).toBe('D3deklX12Ir3kJPfUZ5AQNwHeZn1bwtPkQkw6e+8B38=');
    expect(entry.parentHashUnavailable).toBe('the parent hub is not recorded');
    const wrongHash = decide('allow hash "AAAA" parent-hash "x"\n');
    expect(wrongHash).toMatchObject({ target: 'block', reason: 'no rule matched: implicit target block' });
    expect(wrongHash.error).toBeUndefined();
    expect(decide('allow hash "D3deklX12Ir3kJPfUZ5AQNwHeZn1bwtPkQkw6e+8B38=" parent-hash "x"\n')).toMatchObject({
      target: 'block',
      error: { code: 'DG_USB_HASH_UNAVAILABLE' },
      reason: expect.stringContaining('matches on parent-hash, which is unknown (the parent hub is not recorded)'),
    });
  });
});

describe('hostile strings in decisions', () => {
  it('keeps every string of a decision free of control characters', () => {
    const { dir, sys } = host('usbkbd.umockdev');
    fs.writeFileSync(path.join(sys, KEYBOARD, 'product'), 'Evil\u001b[2J\u0007"\\ name\n');
    fs.writeFileSync(path.join(sys, KEYBOARD, 'serial'), Buffer.from([0x9b, 0x33, 0x31, 0x6d, 0xff, 0x0a]));
    const tree = new LocalHostSource({ roots: rootsUnder(dir), hotplug: 'static' }).snapshot();
    const decisions = applyUsbPolicy(sys, tree, { rules: rules('allow name "Evil\\x1b[2J\\x07\\"\\\\ name"\n') });
    const keyboard = decisions.find((d) => d.device === '1-1.5.4.2')!;
    expect(keyboard.target).toBe('allow');
    expect(keyboard.description).toContain('name "Evil\\x1b[2J\\x07\\"\\\\ name" ');
    expect(keyboard.description).toContain('serial "\\x9b31m\\xff" ');
    for (const decision of decisions) {
      for (const value of Object.values(decision))
        if (typeof value === 'string') expect(value).not.toMatch(UNSAFE_CHARACTERS);
    }
  });
});

describe('UsbAuthorizer: hotplug', () => {
  it('applies the policy to present devices, then to a device plugged in (fs.watch), within 1 s', async () => {
    const { dir, sys } = host('usbkbd.umockdev');
    const source = new LocalHostSource({ roots: rootsUnder(dir), hotplug: 'fs.watch' });
    const authorizer = new UsbAuthorizer(
      source,
      { rules: rules(`${HUBS}\nallow id 05f3:0007\nreject id 04a9:31c0\n`) },
      { sysRoot: sys },
    );
    const present: AuthorizationDecision[] = [];
    const subscription = authorizer.decisions$.subscribe((d) => present.push(d));
    try {
      authorizer.start();
      expect(present.map((d) => [d.device, d.target])).toEqual([
        ['usb1', 'block'],
        ['1-1', 'allow'],
        ['1-1.5', 'allow'],
        ['1-1.5.4', 'allow'],
        ['1-1.5.4.2', 'allow'],
      ]);

      // Plug in the Canon camera behind its NEC hub (canon-powershot-sx200.umockdev, same hub chain).
      const canon = recording('canon-powershot-sx200.umockdev').tree.devices();
      const plugged = withUsbAuthorizationFiles(recordsUnder(canon, `${HUB_1_5}/1-1.5.2`));
      expect(plugged.map((r) => sysname(r.devpath))).toEqual(expect.arrayContaining(['1-1.5.2', '1-1.5.2.3']));
      const next = firstValueFrom(
        authorizer.decisions$.pipe(
          filter((d) => d.kind === 'device'),
          take(2),
          toArray(),
          timeout(1_000),
        ),
      );
      const pluggedAt = Date.now();
      addDevice(dir, plugged);
      const decisions = await next;
      expect(Date.now() - pluggedAt).toBeLessThan(1_000);
      expect(decisions.map((d) => [d.device, d.target, d.attribute, d.value, d.applied])).toEqual([
        ['1-1.5.2', 'allow', 'authorized', '1', true],
        ['1-1.5.2.3', 'reject', 'remove', '1', true],
      ]);
      expect(read(sys, `${HUB_1_5}/1-1.5.2/1-1.5.2.3`, 'remove')).toBe('1');
      // Nothing present was decided again.
      expect(present.filter((d) => d.device === '1-1.5.4.2')).toHaveLength(1);
    } finally {
      subscription.unsubscribe();
      authorizer.dispose();
      source.dispose();
    }
  });

  it('with presentDevicePolicy keep, leaves present devices alone and decides new ones', () => {
    const { sys, source } = host('usbkbd.umockdev');
    const authorizer = new UsbAuthorizer(source, { rules: [], presentDevicePolicy: 'keep' }, { sysRoot: sys });
    const seen: AuthorizationDecision[] = [];
    authorizer.decisions$.subscribe((d) => seen.push(d));
    authorizer.start();
    authorizer.dispose();
    expect(seen.map((d) => [d.kind, d.device])).toEqual([['controller', 'usb1']]);
    expect(read(sys, KEYBOARD, 'authorized')).toBe('1');
  });
});
