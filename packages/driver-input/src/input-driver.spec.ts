import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { firstValueFrom } from 'rxjs';
import {
  type AttachSpec,
  type Connector,
  type DeviceInfo,
  type DeviceSource,
  HostTree,
  type HypervisorAttachment,
  Kernel,
  type RawDeviceRecord,
  describeDevice,
  recordOf,
} from '@devgate/core';
import { LocalHostSource, RecordedDevice, type Recording, isRecordedDevice, loadRecording } from '@devgate/host';
import {
  describeDriverConformance,
  isKernelProperty,
  materializeHost,
  recordedFixture,
  recordedFixturesDir,
  staticSource,
} from '@devgate/testkit';
import { usbModule, parseUsbDevices } from '@devgate/driver-usb';
import { InputDriver } from './input-driver';
import { inputModule } from './input-module';
import { parseInputDevices } from './parse-input-devices';
import { classesOf, primaryClass } from './input-class';
import { inputIdFlags, readCapabilities, udevInputFlags } from './parse-input-capabilities';

// Every recording, those without input devices too.
const recordings = new Map<string, Recording>(
  fs
    .readdirSync(recordedFixturesDir())
    .filter((name) => name !== 'SOURCES.md' && !name.endsWith('.lsblk.json'))
    .sort()
    .map((name) => [name, loadRecording(recordedFixture(name))]),
);
afterAll(() => recordings.forEach((recording) => recording.dispose()));

const tree = (name: string) => recordings.get(name)!.tree;
const WITH_INPUT = [...recordings].filter(([, r]) => r.tree.devices('input').length > 0).map(([name]) => name);

/** The same host as if udev had never run: only what the kernel itself writes (uevent and sysfs). */
function withoutUdev(source: HostTree): HostTree {
  const kernelOnly = (r: RawDeviceRecord) =>
    Object.fromEntries(Object.entries(r.properties).filter(([key]) => isKernelProperty(key)));
  return new HostTree(
    source
      .devices()
      .map((r) =>
        isRecordedDevice(r)
          ? new RecordedDevice({ ...r, properties: kernelOnly(r), devlinks: [] })
          : recordOf(r.devpath, r.subsystem, kernelOnly(r)),
      ),
    source.usage,
  );
}

/** A record with some properties changed (recordings keep their attributes). */
function withProperties(r: RawDeviceRecord, properties: Record<string, string>): RawDeviceRecord {
  return isRecordedDevice(r)
    ? new RecordedDevice({ ...r, properties: { ...r.properties, ...properties } })
    : recordOf(r.devpath, r.subsystem, { ...r.properties, ...properties });
}

function inputDevicesOf(source: HostTree): RawDeviceRecord[] {
  return source.devices('input').filter((r) => /\/input\d+$/.test(r.devpath));
}

/**
 * Where a recording's udev predates a rule of today's input_id, its answer differs from the bitmaps
 * read with today's rules. Each difference is listed with the rule, and asserted as exactly that.
 */
const OLDER_UDEV: Record<string, { udev: string; bitmaps: string; why: string }> = {
  // PROP=12 sets INPUT_PROP_DIRECT. systemd PR #13 (v221, 2015) made a direct device with fingers a
  // touchscreen, not a touchpad, and its BTN_LEFT an absolute mouse; this recording is from 2013.
  'synaptics-touchpad.umockdev /devices/platform/i8042/serio1/input/input12': {
    udev: 'touchpad',
    bitmaps: 'tablet',
    why: 'INPUT_PROP_DIRECT rule (systemd v221)',
  },
};

describeDriverConformance('input', {
  createDriver: () => new InputDriver(),
  trees: () =>
    Object.fromEntries([...recordings].map(([name, recording]): [string, HostTree] => [name, recording.tree])),
});

describe('classification: the same answers as udev’s input_id', () => {
  it('covers every recording with input devices', () => {
    expect(WITH_INPUT).toEqual([
      'HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt',
      'LENOVO_T420.txt',
      'REALTEK_CARD_READER_AND_NVME.txt',
      'SHUTTLE_DH170_WITH_USB_DISK.txt',
      'TOSHIBA_NVME.txt',
      'synaptics-touchpad.umockdev',
      'usbkbd.umockdev',
    ]);
  });

  describe.each(WITH_INPUT)('%s', (name) => {
    it('gives every input device the class udev gave it, from the kernel’s bitmaps alone', () => {
      const inputs = inputDevicesOf(tree(name));
      expect(inputs.length).toBeGreaterThan(0);
      let compared = 0;
      for (const input of inputs) {
        const udev = udevInputFlags(input.properties);
        expect(udev).toBeDefined(); // every recorded input device was seen by udev
        const stripped = withoutUdev(new HostTree([input])).device(input.devpath)!;
        expect(udevInputFlags(stripped.properties)).toBeUndefined();
        const caps = readCapabilities(stripped);
        const fromBitmaps = primaryClass(classesOf(inputIdFlags(caps), caps));
        const fromUdev = primaryClass(classesOf(udev!, caps));
        const known = OLDER_UDEV[`${name} ${input.devpath}`];
        if (known) {
          expect({ udev: fromUdev, bitmaps: fromBitmaps }).toEqual({ udev: known.udev, bitmaps: known.bitmaps });
        } else {
          expect(`${input.properties.NAME}: ${fromBitmaps}`).toBe(`${input.properties.NAME}: ${fromUdev}`);
        }
        compared++;
      }
      expect(compared).toBe(inputs.length);
    });

    it('lists the same devices, ports and classes with udev’s data removed', () => {
      const withUdev = parseInputDevices(tree(name), 'dom0');
      const bare = parseInputDevices(withoutUdev(tree(name)), 'dom0');
      expect(bare.map((d) => d.port.portId)).toEqual(withUdev.map((d) => d.port.portId));
      for (const device of bare) expect(device.data['classified-by']).toBe('capabilities');
      const classes = (devices: DeviceInfo[]) =>
        devices.map((d) => `${d.port.portId}=${String(d.data['input-class'])}`);
      const expected = classes(withUdev).map((entry) =>
        name === 'synaptics-touchpad.umockdev' ? entry.replace('=touchpad', '=tablet') : entry,
      );
      expect(classes(bare)).toEqual(expected);
    });
  });

  it('agrees with a current udev flag for flag, not only class (the 2023 EliteBook)', () => {
    for (const input of inputDevicesOf(tree('HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt'))) {
      const caps = readCapabilities(input);
      expect([...inputIdFlags(caps)].sort()).toEqual([...udevInputFlags(input.properties)!].sort());
    }
  });

  it('also classifies from sysfs files, as a host without udev has them', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-input-'));
    try {
      const roots = materializeHost(withoutUdev(tree('usbkbd.umockdev')), dir);
      const source = new LocalHostSource({ backend: 'dom0', hotplug: 'static', roots });
      try {
        const [keyboard] = await firstValueFrom(new InputDriver().discover(source));
        expect(keyboard.port.portId).toBe('1-1.5.4.2');
        expect(keyboard.data).toMatchObject({ 'input-class': 'keyboard', 'classified-by': 'capabilities' });
      } finally {
        source.dispose();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('one entry per physical device', () => {
  it('a USB keyboard: its USB device is its port and parent, and its identity is the USB class’s', () => {
    const [keyboard] = parseInputDevices(tree('usbkbd.umockdev'), 'sys-usb');
    const [usb] = parseUsbDevices(tree('usbkbd.umockdev'), 'sys-usb').filter((d) => d.port.portId === '1-1.5.4.2');
    expect(keyboard.port).toEqual({ devclass: 'input', backend: 'sys-usb', portId: '1-1.5.4.2' });
    expect(keyboard.parent).toEqual(usb.port);
    expect(keyboard.deviceId).toBe(usb.deviceId);
    expect(keyboard.interfaces).toEqual(['i010300', 'u030101', 'u030000']);
    expect(describeDevice(keyboard)).toBe('Keyboard: PI Engineering, Inc. Kinesis Advantage PRO MPC/USB Keyboard');
    expect(keyboard.data).toMatchObject({
      bus: 'usb',
      'event-nodes': 'event5',
      'event-devices': '13:69',
      'qubes-services': 'qubes.InputKeyboard',
    });
  });

  it('a keyboard with two HID interfaces is one device with two event nodes', () => {
    const devices = parseInputDevices(tree('SHUTTLE_DH170_WITH_USB_DISK.txt'), 'dom0');
    const keyboard = devices.find((d) => d.port.portId === '1-9')!;
    expect(keyboard.data).toMatchObject({
      'input-class': 'keyboard',
      'input-classes': 'keyboard,other',
      'event-nodes': 'event4,event5',
    });
    expect(devices.filter((d) => d.parent?.portId === '1-9')).toHaveLength(1);
  });

  it('a touchpad with a pointing stick on one I2C device is one device; a TrackPoint behind the touchpad’s port is another', () => {
    const hp = parseInputDevices(tree('HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt'), 'dom0');
    const syna = hp.find((d) => d.port.portId === 'i2c-SYNA3105_00')!;
    expect(syna.data).toMatchObject({ 'input-class': 'touchpad', 'input-classes': 'touchpad,mouse', bus: 'i2c' });
    expect((syna.data['event-nodes'] as string).split(',')).toHaveLength(2);
    expect(syna.data['qubes-services']).toBe('qubes.InputMouse,qubes.InputTablet');
    const t420 = parseInputDevices(tree('LENOVO_T420.txt'), 'dom0');
    expect(t420.find((d) => d.port.portId === 'serio1')?.data['input-class']).toBe('touchpad');
    expect(t420.find((d) => d.port.portId === 'serio2')?.data['input-class']).toBe('mouse');
    expect(t420.find((d) => d.port.portId === 'serio0')?.interfaces).toEqual(['i011100']);
  });

  it('names ports without colons, so BACKEND:PORT:DEVICE_ID arguments stay unambiguous', () => {
    for (const name of WITH_INPUT) {
      for (const device of parseInputDevices(tree(name), 'dom0')) {
        expect(device.port.portId).toMatch(/^[A-Za-z0-9_.-]+$/);
      }
    }
  });
});

describe('BadUSB', () => {
  /** The Kinesis keyboard, with a mass-storage interface added to its USB device. */
  function keyboardThatIsAStick(): HostTree {
    const base = tree('usbkbd.umockdev');
    const usbPath = '/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2';
    const records = base
      .devices()
      .map((r) => (r.devpath === usbPath ? withProperties(r, { ID_USB_INTERFACES: ':030101:080650:' }) : r));
    records.push(
      recordOf(
        `${usbPath}/1-1.5.4.2:1.1`,
        'usb',
        { DEVTYPE: 'usb_interface', INTERFACE: '8/6/80' },
        {
          bInterfaceClass: '08',
          bInterfaceSubClass: '06',
          bInterfaceProtocol: '50',
        },
      ),
    );
    return new HostTree(records);
  }

  it('flags a keyboard that is also USB storage, in its description (lists, asks)', () => {
    const [device] = parseInputDevices(keyboardThatIsAStick(), 'sys-usb');
    expect(device.data.warning).toBe('BadUSB? this keyboard is also USB storage in one USB device');
    expect(describeDevice(device)).toMatch(/^Keyboard: .* \[BadUSB\? this keyboard is also USB storage/);
    // Without udev the interfaces come from the interface records: still flagged.
    const [bare] = parseInputDevices(withoutUdev(keyboardThatIsAStick()), 'sys-usb');
    expect(bare.data.warning).toBeDefined();
  });

  it('leaves plain keyboards and cameras with buttons alone', () => {
    for (const name of WITH_INPUT) {
      for (const device of parseInputDevices(tree(name), 'dom0')) expect(device.data.warning).toBeUndefined();
    }
  });
});

describe('InputDriver in the kernel', () => {
  /** A connector that records what it was asked, for overlap checks. */
  function fakeConnector(): Connector & { attached: HypervisorAttachment[] } {
    const attached: HypervisorAttachment[] = [];
    return {
      id: 'fake',
      attached,
      manages: () => true,
      domains: () => ['work', 'personal'],
      isRunning: async () => true,
      attach: async (frontend, port, spec: AttachSpec, deviceId) => {
        const a = { port, frontend, deviceId, options: spec.options };
        attached.push(a);
        return a;
      },
      detach: async () => undefined,
      attachments: async () => attached,
      dispose: () => undefined,
    };
  }

  it('refuses the keyboard while its USB device is attached elsewhere, and the other way round', async () => {
    const kernel = new Kernel().load(usbModule, inputModule);
    const source: DeviceSource = {
      ...staticSource(tree('usbkbd.umockdev'), 'dom0'),
      dataPath: async (_device, spec) => spec,
    };
    kernel.registerSource(source);
    kernel.registerConnector(fakeConnector());
    const manager = kernel.start();
    try {
      await manager.attach({ frontend: 'work', port: { devclass: 'usb', backend: 'dom0', portId: '1-1.5.4.2' } });
      await expect(
        manager.attach({ frontend: 'personal', port: { devclass: 'input', backend: 'dom0', portId: '1-1.5.4.2' } }),
      ).rejects.toMatchObject({ code: 'DG_OVERLAP' });
      await manager.detach('work', { devclass: 'usb', backend: 'dom0', portId: '1-1.5.4.2' });
      await manager.attach({ frontend: 'personal', port: { devclass: 'input', backend: 'dom0', portId: '1-1.5.4.2' } });
      await expect(
        manager.attach({ frontend: 'work', port: { devclass: 'usb', backend: 'dom0', portId: '1-1.5.4.2' } }),
      ).rejects.toMatchObject({ code: 'DG_OVERLAP' });
    } finally {
      kernel.dispose();
    }
  });

  it('lists a recorded backend’s input devices through the kernel', () => {
    const kernel = new Kernel().load(inputModule);
    try {
      kernel.registerSource(staticSource(tree('synaptics-touchpad.umockdev'), 'sys-usb'));
      const ports = kernel
        .start()
        .list({ devclass: 'input' })
        .map((d) => `${d.port.backend}:${d.port.portId}`);
      expect(ports).toEqual(['sys-usb:serio1']);
    } finally {
      kernel.dispose();
    }
  });
});
