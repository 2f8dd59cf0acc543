import * as fs from 'node:fs';
import { HostTree, sysname, usbDeviceAbove, usbIds, usbInterfaces } from '@devgate/core';
import { loadUmockdev, parseUmockdev, unescapeAttribute } from './parse-umockdev.js';
import { type RecordedDevice } from './recorded-device.js';
import { expectRecordingError, recorded } from './testing/recordings';

function byName(records: readonly RecordedDevice[], name: string): RecordedDevice {
  const found = records.find((r) => sysname(r.devpath) === name);
  if (!found) throw new Error(`no device ${name}`);
  return found;
}

describe('parseUmockdev on the recordings', () => {
  describe('usbkbd.umockdev (Kinesis keyboard behind three hubs)', () => {
    const records = loadUmockdev(recorded('usbkbd.umockdev'));
    const tree = new HostTree(records);

    it('reads every record, child first', () => {
      expect(records).toHaveLength(9);
      expect(sysname(records[0].devpath)).toBe('event5');
      expect(records[8].devpath).toBe('/devices/pci0000:00/0000:00:1a.0');
    });

    it('finds the keyboard usb_device 05f3:0007 at 1-1.5.4.2 with unescaped attributes', () => {
      const kbd = byName(records, '1-1.5.4.2');
      expect(kbd.devpath).toMatch(/\/1-1\.5\.4\.2$/);
      expect(kbd.subsystem).toBe('usb');
      expect(kbd.properties.DEVTYPE).toBe('usb_device');
      expect(kbd.attribute('idVendor')).toBe('05f3');
      expect(kbd.attribute('idProduct')).toBe('0007');
      expect(usbIds(kbd)).toEqual({ vendorId: '05f3', productId: '0007' });
      // `A: busnum=1\n` (newer style) and `A: devpath=1.5.4.2` (stripped) read the same way.
      expect(kbd.attribute('busnum')).toBe('1');
      expect(kbd.attribute('devnum')).toBe('9');
      expect(kbd.attribute('devpath')).toBe('1.5.4.2');
      expect(kbd.attribute('speed')).toBe('12');
      // Leading spaces are part of the value.
      expect(kbd.attribute('bNumInterfaces')).toBe(' 2');
      expect(kbd.attribute('version')).toBe(' 1.10');
      expect(kbd.attribute('configuration')).toBe('');
      expect(kbd.attribute('manufacturer')).toBeUndefined();
    });

    it('keeps binary attributes out of attribute() and as bytes elsewhere', () => {
      const kbd = byName(records, '1-1.5.4.2');
      expect(kbd.attribute('descriptors')).toBeUndefined();
      const descriptors = kbd.binaryAttributes.get('descriptors')!;
      expect(descriptors).toHaveLength(77);
      expect([...descriptors.subarray(0, 2)]).toEqual([0x12, 0x01]); // a device descriptor comes first
      // idVendor little-endian at offset 8
      expect(Buffer.from(descriptors).readUInt16LE(8)).toBe(0x05f3);
      expect(Buffer.from(kbd.devnodeContents!)).toEqual(Buffer.from(descriptors));
    });

    it('reads N:, S: and L: lines', () => {
      const kbd = byName(records, '1-1.5.4.2');
      expect(kbd.devnode).toBe('bus/usb/001/009');
      expect(kbd.properties.DEVNAME).toBe('/dev/bus/usb/001/009');
      expect(kbd.links.get('driver')).toBe('../../../../../../../../bus/usb/drivers/usb');
      expect(kbd.links.get('port')).toBe('../1-1.5.4:1.0/port2');
      const event = byName(records, 'event5');
      expect(event.subsystem).toBe('input');
      expect(event.devlinks).toEqual([
        'input/by-id/usb-05f3_0007-event-kbd',
        'input/by-path/pci-0000:00:1a.0-usb-0:1.5.4.2:1.0-event-kbd',
      ]);
      expect(event.properties.ID_INPUT_KEYBOARD).toBe('1');
      expect(event.attribute('dev')).toBe('13:69');
    });

    it('keeps property values raw and attribute values unescaped', () => {
      const input = byName(records, 'input5');
      expect(input.properties.NAME).toBe('"HID 05f3:0007"');
      expect(input.attribute('name')).toBe('HID 05f3:0007');
      expect(input.attribute('uniq')).toBe('');
      const hub = byName(records, '1-1.5.4');
      expect(hub.properties.ID_MODEL_ENC).toBe('Kinesis\\x20Keyboard\\x20Hub');
      expect(hub.attribute('bDeviceClass')).toBe('09');
      expect(hub.attribute('product')).toBe('Kinesis Keyboard Hub');
    });

    it('builds a tree drivers can walk', () => {
      const event = byName(records, 'event5');
      const usbDevice = usbDeviceAbove(tree, event)!;
      expect(sysname(usbDevice.devpath)).toBe('1-1.5.4.2');
      expect(usbInterfaces(tree, usbDevice)).toEqual(['u030101', 'u030000']);
      const iface = byName(records, '1-1.5.4.2:1.0');
      expect(iface.properties.DEVTYPE).toBe('usb_interface');
      expect(iface.attribute('bInterfaceClass')).toBe('03');
      expect(iface.properties.DRIVER).toBe('usbhid');
      const pci = byName(records, '0000:00:1a.0');
      expect(tree.device(pci.devpath)).toBe(pci);
      expect(pci.subsystem).toBe('pci');
      expect(pci.attribute('class')).toBe('0x0c0320');
      expect(pci.attribute('vendor')).toBe('0x8086');
      expect(pci.properties.DRIVER).toBe('ehci-pci');
      expect(pci.attribute('config')).toBeUndefined();
      expect(pci.binaryAttributes.get('config')?.[0]).toBe(0x86);
      expect(sysname(tree.parent(byName(records, 'usb1'))!.devpath)).toBe('0000:00:1a.0');
    });
  });

  it('usbkbd.pcap.umockdev: Holtek 04d9:1603 at 1-3 on xHCI, usb_device records only', () => {
    const records = loadUmockdev(recorded('usbkbd.pcap.umockdev'));
    expect(records.map((r) => sysname(r.devpath))).toEqual(['1-3', 'usb1', '0000:00:14.0']);
    const kbd = records[0];
    expect(usbIds(kbd)).toEqual({ vendorId: '04d9', productId: '1603' });
    expect(kbd.attribute('speed')).toBe('1.5');
    expect(kbd.attribute('manufacturer')).toBe('');
    expect(kbd.attribute('product')).toBe('USB Keyboard');
    expect(records[1].attribute('idVendor')).toBe('1d6b');
    expect(records[2].attribute('class')).toBe('0x0c0330');
    expect(records.some((r) => r.properties.DEVTYPE === 'usb_interface')).toBe(false);
  });

  it('synaptics-touchpad.umockdev: PS/2 touchpad with input and event nodes', () => {
    const records = loadUmockdev(recorded('synaptics-touchpad.umockdev'));
    expect(records.map((r) => [sysname(r.devpath), r.subsystem])).toEqual([
      ['event12', 'input'],
      ['input12', 'input'],
      ['serio1', 'serio'],
      ['i8042', 'platform'],
    ]);
    expect(records[0].properties.ID_INPUT_TOUCHPAD).toBe('1');
    expect(records[0].properties.DEVNAME).toBe('/dev/input/event12');
    expect(records[1].attribute('name')).toBe('SynPS/2 Synaptics TouchPad');
    expect(records[2].properties.DRIVER).toBe('psmouse');
    expect(records[2].attribute('firmware_id')).toBe('PNP: LEN0020 PNP0f13');
  });

  it('canon-powershot-sx200.umockdev: still camera 04a9:31c0 behind the NEC hub', () => {
    const records = loadUmockdev(recorded('canon-powershot-sx200.umockdev'));
    const tree = new HostTree(records);
    const camera = records[0];
    expect(sysname(camera.devpath)).toBe('1-1.5.2.3');
    expect(usbIds(camera)).toEqual({ vendorId: '04a9', productId: '31c0' });
    expect(camera.attribute('manufacturer')).toBe('Canon Inc.');
    expect(camera.attribute('serial')).toBe('C767F1C714174C309255F70E4A7B2EE2');
    expect(usbInterfaces(tree, camera)).toEqual(['u060101']);
    expect(usbIds(tree.parent(camera)!)).toEqual({ vendorId: '0409', productId: '0058' });
    // Only the camera's N: line carries node contents here.
    expect(camera.devnodeContents).toBeDefined();
    expect(records[1].devnode).toBe('bus/usb/001/005');
    expect(records[1].devnodeContents).toBeUndefined();
  });

  it('sony-xperia-mini-pro.umockdev: phone 0fce:0166 with a vendor-class interface', () => {
    const records = loadUmockdev(recorded('sony-xperia-mini-pro.umockdev'));
    const tree = new HostTree(records);
    const phone = records[0];
    expect(sysname(phone.devpath)).toBe('1-1.5.2.4');
    expect(usbIds(phone)).toEqual({ vendorId: '0fce', productId: '0166' });
    expect(phone.attribute('product')).toBe('MiniPro');
    expect(usbInterfaces(tree, phone)).toEqual(['uffff00']);
    expect(tree.devices('usb')).toHaveLength(5);
  });

  it('fido2.umockdev: Yubico 1050:0120 with hid and hidraw children; values keep "\\n" in the file', () => {
    const records = loadUmockdev(recorded('fido2.umockdev'));
    const tree = new HostTree(records);
    expect(records).toHaveLength(8);
    const hidraw = byName(records, 'hidraw5');
    expect(hidraw.subsystem).toBe('hidraw');
    expect(hidraw.properties.DEVNAME).toBe('/dev/hidraw5');
    expect(hidraw.properties.ID_FIDO_TOKEN).toBe('1');
    expect(hidraw.attribute('dev')).toBe('240:5');
    expect(hidraw.attribute('power/control')).toBe('auto');
    expect(hidraw.entries('power')).toEqual([
      'control',
      'runtime_active_time',
      'runtime_status',
      'runtime_suspended_time',
    ]);
    expect(hidraw.entries('nothing')).toBeUndefined();
    const key = usbDeviceAbove(tree, hidraw)!;
    expect(sysname(key.devpath)).toBe('1-2.3');
    expect(key.attribute('idVendor')).toBe('1050');
    expect(key.attribute('product')).toBe('Security Key by Yubico');
    const hid = byName(records, '0003:1050:0120.000A');
    expect(hid.subsystem).toBe('hid');
    expect(hid.attribute('report_descriptor')).toBeUndefined();
    expect(hid.binaryAttributes.get('report_descriptor')).toHaveLength(34);
    expect(byName(records, '0000:00:08.1').attribute('class')).toBe('0x060400');
  });
});

describe('unescapeAttribute (g_strcompress)', () => {
  it.each([
    ['plain', 'plain'],
    ['1\\n', '1\n'],
    ['a\\\\b', 'a\\b'],
    ['tab\\there', 'tab\there'],
    ['\\"quoted\\"', '"quoted"'],
    ['caf\\303\\251', 'café'],
    ['\\101\\102C', 'ABC'],
    ['\\0', '\0'],
    ['\\1234', 'S4'], // at most three octal digits
    ['\\q', 'q'],
    ['trailing\\', 'trailing'],
    ['\\\u{1f600}', '\u{1f600}'],
  ])('%j -> %j', (escaped, value) => {
    expect(unescapeAttribute(escaped)).toBe(value);
  });

  it('turns invalid UTF-8 into replacement characters', () => {
    expect(unescapeAttribute('\\377x')).toBe('\ufffdx');
  });
});

describe('parseUmockdev on malformed input', () => {
  const minimal = 'P: /devices/x\nE: SUBSYSTEM=usb\n';

  it('parses a minimal record and tolerates CRLF, comments and extra blank lines', () => {
    const records = parseUmockdev(
      `# comment\r\n\r\n${minimal.replace(/\n/g, '\r\n')}\n\n\n${minimal.replace('/x', '/y')}`,
    );
    expect(records.map((r) => r.devpath)).toEqual(['/devices/x', '/devices/y']);
    expect(records[0].properties).toEqual({ SUBSYSTEM: 'usb' });
    expect(parseUmockdev('')).toEqual([]);
    // A comment inside a record does not end it.
    expect(parseUmockdev('P: /devices/x\n# note\nE: SUBSYSTEM=usb\n')[0].subsystem).toBe('usb');
  });

  it('rejects garbage with the line number', () => {
    expectRecordingError(() => parseUmockdev('hello world\n'), /line 1: .*P: /);
    // Control characters in the quoted line are made visible, not replayed to a terminal.
    expectRecordingError(() => parseUmockdev('\u001b[2J\n'), /got '\\x1b\[2J'/);
    expectRecordingError(
      () => parseUmockdev(`${minimal}this is not a line\n`),
      /line 3: malformed line 'this is not a line'/,
    );
  });

  it('rejects a record without P:', () => {
    expectRecordingError(() => parseUmockdev(`${minimal}\nE: SUBSYSTEM=usb\nA: x=1\n`), /line 4: .*must start with/);
  });

  it('rejects records without or with two SUBSYSTEMs, and a second P:', () => {
    expectRecordingError(
      () => parseUmockdev('P: /devices/x\nE: A=1\n'),
      /line 1: device \/devices\/x has no SUBSYSTEM/,
    );
    expectRecordingError(() => parseUmockdev(`${minimal}E: SUBSYSTEM=pci\n`), /line 3: duplicate SUBSYSTEM/);
    expectRecordingError(() => parseUmockdev(`${minimal}P: /devices/y\n`), /line 3: second P:/);
  });

  it('rejects unsafe paths and names', () => {
    expectRecordingError(() => parseUmockdev('P: /sys/devices/x\nE: SUBSYSTEM=usb\n'), /invalid device path/);
    expectRecordingError(() => parseUmockdev('P: /devices/../../etc\nE: SUBSYSTEM=usb\n'), /invalid device path/);
    expectRecordingError(() => parseUmockdev(`${minimal}A: ../../evil=1\n`), /line 3: invalid attribute name/);
    expectRecordingError(() => parseUmockdev(`${minimal}A: uevent=FOO=1\n`), /invalid attribute name 'uevent'/);
    expectRecordingError(() => parseUmockdev(`${minimal}N: ../etc/passwd\n`), /invalid device node name/);
    expectRecordingError(() => parseUmockdev(`${minimal}S: /abs\n`), /invalid devlink/);
    expectRecordingError(() => parseUmockdev('P: /devices/x\nE: SUBSYSTEM=../bus\n'), /invalid SUBSYSTEM/);
  });

  it('rejects malformed hex', () => {
    expectRecordingError(() => parseUmockdev(`${minimal}H: descriptors=123\n`), /line 3: malformed hexadecimal/);
    expectRecordingError(() => parseUmockdev(`${minimal}H: descriptors=XY\n`), /malformed hexadecimal/);
    expectRecordingError(() => parseUmockdev(`${minimal}N: bus/usb/001/001=12G4\n`), /malformed line/);
  });

  it('handles a truncated file: a cut line is still a line, a cut record may lose SUBSYSTEM', () => {
    const full = fs.readFileSync(recorded('usbkbd.umockdev'), 'utf8');
    // Cut in the middle of an A: line of the last record: what remains parses.
    const cut = full.slice(0, full.indexOf('A: consistent_dma_mask_bits=') + 'A: consistent_dma'.length);
    expectRecordingError(() => parseUmockdev(cut), /malformed line 'A: consistent_dma'/);
    const atRecordStart = full.slice(0, full.lastIndexOf('P: ') + 20);
    expectRecordingError(() => parseUmockdev(atRecordStart), /has no SUBSYSTEM|invalid device path/);
    const cleanCut = full.slice(0, full.lastIndexOf('\n\nP: '));
    expect(parseUmockdev(cleanCut)).toHaveLength(8);
  });

  it('bounds line length and refuses binary data', () => {
    expectRecordingError(
      () => parseUmockdev(`${minimal}A: big=${'x'.repeat(300 * 1024)}\n`),
      /line 3: line longer than/,
    );
    expectRecordingError(() => parseUmockdev(`${minimal}A: nul=a\0b\n`), /line 3: NUL byte/);
  });

  it('keeps other control characters as data, for the drivers to sanitize', () => {
    const records = parseUmockdev(`${minimal}A: name=\u001b[31mred\\033[0m\nE: ID_MODEL=a\u0007b\n`);
    expect(records[0].attribute('name')).toBe('\u001b[31mred\u001b[0m');
    expect(records[0].properties.ID_MODEL).toBe('a\u0007b');
  });

  it('keeps a __proto__ property as a plain key', () => {
    const [record] = parseUmockdev(`${minimal}E: __proto__=x\n`);
    expect(Object.getPrototypeOf(record.properties)).toBe(Object.prototype);
    expect(Object.prototype.hasOwnProperty.call(record.properties, '__proto__')).toBe(true);
    const key = '__proto__';
    expect(record.properties[key]).toBe('x');
  });

  it('reports an unreadable file with the coded error', () => {
    expectRecordingError(() => loadUmockdev('/nonexistent/devgate.umockdev'), /ENOENT/);
  });
});
