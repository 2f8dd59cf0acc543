import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HostTree, recordOf } from '@devgate/core';
import { RecordedDevice, isRecordedDevice, loadRecording } from '@devgate/host';
import { materializeHost, recordedFixture } from '@devgate/testkit';
import { runCaptured } from './test-io';

// Input devices from the command line: listing (Qubes' formats and devgate's), and Qubes' input
// policy checked and explained.
let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-input-cli-'));
  process.env.DEVGATE_DOMAINS = path.join(dir, 'domains.json');
});
afterAll(() => {
  delete process.env.DEVGATE_DOMAINS;
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Listed {
  port: string;
  class: string;
  description: string;
  parent: string | null;
  deviceId: string;
  data: Record<string, string | number | boolean>;
}

describe('listing input devices', () => {
  it('devgate list --class input: one device per physical device, under its USB device', async () => {
    const { code, out, err } = await runCaptured('devgate', [
      'list',
      '--class',
      'input',
      '--json',
      '--recording',
      recordedFixture('SHUTTLE_DH170_WITH_USB_DISK.txt'),
    ]);
    expect(err).toBe('');
    expect(code).toBe(0);
    const devices = JSON.parse(out) as Listed[];
    expect(devices.every((d) => d.class === 'input')).toBe(true);
    const keyboard = devices.find((d) => d.port === 'dom0:1-9')!;
    expect(keyboard).toMatchObject({
      parent: 'dom0:1-9',
      description: 'Keyboard: Primax Electronics, Ltd USB Keyboard',
    });
    expect(keyboard.data).toMatchObject({ 'event-nodes': 'event4,event5', 'input-class': 'keyboard', bus: 'usb' });
  });

  it('qvm-device input list prints Qubes’ columns', async () => {
    const { code, out } = await runCaptured('qvm-device', [
      'input',
      'list',
      '--recording',
      recordedFixture('usbkbd.umockdev'),
      '--backend',
      'sys-usb',
    ]);
    expect(code).toBe(0);
    expect(out).toBe('sys-usb:1-1.5.4.2  Keyboard: PI Engineering, Inc. Kinesis Advantage PRO MPC/USB Keyboard\n');
  });

  it('classifies from the kernel’s bitmaps on a host without udev, and flags a keyboard that is also a stick', async () => {
    // The Kinesis keyboard's host, without udev's database, with mass storage added to the keyboard.
    const recording = loadRecording(recordedFixture('usbkbd.umockdev'));
    const usbPath = '/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2';
    const kernelOnly = (props: Readonly<Record<string, string>>) =>
      Object.fromEntries(Object.entries(props).filter(([k]) => !/^(ID_|XKB|DEVLINKS|TAGS|USEC)/.test(k)));
    const records = recording.tree
      .devices()
      .map((r) =>
        isRecordedDevice(r)
          ? new RecordedDevice({ ...r, properties: kernelOnly(r.properties), devlinks: [] })
          : recordOf(r.devpath, r.subsystem, kernelOnly(r.properties)),
      );
    records.push(
      new RecordedDevice({
        devpath: `${usbPath}/1-1.5.4.2:1.1`,
        subsystem: 'usb',
        properties: { DEVTYPE: 'usb_interface', INTERFACE: '8/6/80', PRODUCT: '5f3/7/320', TYPE: '0/0/0' },
        attributes: { bInterfaceClass: '08', bInterfaceSubClass: '06', bInterfaceProtocol: '50' },
      }),
    );
    const root = path.join(dir, 'badusb-host');
    materializeHost(new HostTree(records), root);
    recording.dispose();
    const { code, out } = await runCaptured('devgate', ['list', '--class', 'input', '--sysroot', root, '--json']);
    expect(code).toBe(0);
    const [device] = JSON.parse(out) as Listed[];
    expect(device.data['classified-by']).toBe('capabilities');
    expect(device.data['input-class']).toBe('keyboard');
    expect(device.description).toMatch(
      /^Keyboard: .*\[BadUSB\? this keyboard is also USB storage in one USB device\]$/,
    );
    const table = await runCaptured('devgate', ['list', '--sysroot', root]);
    expect(table.out).toMatch(/^dom0:1-1\.5\.4\.2 +input +Keyboard: .*\[BadUSB\?/m);
  });
});

describe('devgate input policy', () => {
  const write = (name: string, text: string) => {
    const file = path.join(dir, name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, text);
    return file;
  };

  it('check: a good file is ok; a bad one gives every problem at FILE:LINE:COLUMN and exits 1', async () => {
    const good = write(
      'good/50-config-input.policy',
      (await runCaptured('devgate', ['input', 'policy', 'defaults', 'sys-usb'])).out,
    );
    const ok = await runCaptured('devgate', ['input', 'policy', 'check', good]);
    expect(ok).toMatchObject({ code: 0, out: `${good}: ok (3 rules)\n`, err: '' });

    const bad = write(
      'bad/50-input.policy',
      [
        'qubes.InputMouse * sys-usb dom0 ask default_target=dom0',
        'qubes.InputKeyboard * sys-usb dom0',
        'qubes.InputTablet * sys-usb @foo deny',
      ].join('\n'),
    );
    const failed = await runCaptured('devgate', ['input', 'policy', 'check', bad]);
    expect(failed.code).toBe(1);
    expect(failed.err).toBe(
      `${bad}:2:31: wrong number of fields\n` +
        `${bad}:3:29: invalid target token: '@foo'\n` +
        `devgate: error: ${bad}: 2 problems in the input policy\n` +
        "devgate: hint: the format is Qubes' qrexec policy, policy.d lines or old per-service files (docs/input.md)\n",
    );
  });

  it('check: an old per-service file is read in its own format, by its name', async () => {
    const old = write(
      'qubes-rpc/qubes.InputKeyboard',
      'sys-usb dom0 allow,user=root\n$anyvm $anyvm deny\nsys-usb dom0 deny,target=work\n',
    );
    const result = await runCaptured('devgate', ['input', 'policy', 'check', old]);
    expect(result.code).toBe(1);
    expect(result.err.split('\n')[0]).toBe(`${old}:3:19: invalid parameter for action deny: 'target=work'`);
  });

  it('explain: Qubes’ installer defaults for a recorded sys-usb: its keyboard is denied, and why', async () => {
    const { code, out, err } = await runCaptured('devgate', [
      'input',
      'policy',
      'explain',
      '--recording',
      recordedFixture('usbkbd.umockdev'),
      '--backend',
      'sys-usb',
      '--policy',
      path.join(dir, 'no-such-policy.d'),
      '--json',
    ]);
    expect(err).toBe('');
    expect(code).toBe(0);
    expect(JSON.parse(out)).toEqual([
      {
        port: 'sys-usb:1-1.5.4.2',
        verdict: 'deny',
        events: '',
        reason: 'qubes.InputKeyboard (event5): denied by policy (installer defaults for sys-usb):2',
      },
    ]);
  });
});
