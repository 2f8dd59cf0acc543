import * as fs from 'node:fs';
import * as path from 'node:path';
import { firstValueFrom } from 'rxjs';
import { type DeviceInfo, HostTree, Kernel, describeDevice, recordOf } from '@devgate/core';
import { LOCAL_ROOTS, type Recording, RecordedHostSource, loadRecording, readHostTree } from '@devgate/host';
import { describeDriverConformance, recordedFixture, recordedFixturesDir, staticSource } from '@devgate/testkit';
import { parsePciDevices } from './pci-devices';
import { PciDriver } from './pci-driver';
import { NO_PCI_NAMES, PCI_IDS_PATHS, systemPciNames } from './pci-ids';
import { pciModule } from './pci-module';

// Every recording, those without PCI devices too: a driver must handle those as well.
const recordings = new Map<string, Recording>(
  fs
    .readdirSync(recordedFixturesDir())
    .filter((name) => name !== 'SOURCES.md' && !name.endsWith('.lsblk.json'))
    .sort()
    .map((name) => [name, loadRecording(recordedFixture(name))]),
);
afterAll(() => recordings.forEach((recording) => recording.dispose()));

describeDriverConformance('pci', {
  createDriver: () => new PciDriver(NO_PCI_NAMES),
  trees: () =>
    Object.fromEntries([...recordings].map(([name, recording]): [string, HostTree] => [name, recording.tree])),
});

/** The host's pci.ids: CI installs hwdata (.ci/run); names are asserted only where it is. */
const hasPciIds = PCI_IDS_PATHS.some((file) => fs.existsSync(file));

function devices(name: string): DeviceInfo[] {
  return parsePciDevices(recordings.get(name)!.tree, 'dom0', systemPciNames());
}

/** keyd's uinput keyboard, as udev classifies it: it types only what the real keyboard typed. */
const keydVirtualKeyboard = recordOf('/devices/virtual/input/input99', 'input', {
  NAME: '"keyd virtual keyboard"',
  ID_INPUT: '1',
  ID_INPUT_KEY: '1',
  ID_INPUT_KEYBOARD: '1',
});

function byPort(list: readonly DeviceInfo[], portId: string): DeviceInfo {
  const found = list.find((d) => d.port.portId === portId);
  if (!found) throw new Error(`no ${portId} in ${list.map((d) => d.port.portId).join(' ')}`);
  return found;
}

describe('PCI listing on recorded machines', () => {
  it('lists every PCI function of each recording that describes any (as many as it has pci records)', () => {
    const counts = Object.fromEntries(
      [...recordings.keys()].map((name) => [name, devices(name).length] as const).filter(([, n]) => n > 0),
    );
    expect(counts).toEqual({
      'HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt': 39,
      'LENOVO_T420.txt': 17,
      'REALTEK_CARD_READER_AND_NVME.txt': 22,
      'SHUTTLE_DH170_WITH_USB_DISK.txt': 15,
      'TOSHIBA_NVME.txt': 26,
      'canon-powershot-sx200.umockdev': 1,
      'fido2.umockdev': 2,
      'sony-xperia-mini-pro.umockdev': 1,
      'usbkbd.pcap.umockdev': 1,
      'usbkbd.umockdev': 1,
    });
  });

  it('ThinkPad T420: two EHCI controllers, the camera, fingerprint reader and Bluetooth behind 00_1a.0', () => {
    const t420 = devices('LENOVO_T420.txt');
    const ehci2 = byPort(t420, '00_1a.0');
    expect(ehci2.deviceId).toBe('0x8086:0x1c2d::p0c0320');
    expect(ehci2.interfaces).toEqual(['p0c0320']);
    expect(ehci2.data).toMatchObject({ sbdf: '0000:00:1a.0', driver: 'ehci-pci', 'usb-buses': 'usb1' });
    expect(String(ehci2.data['usb-devices'])).toBe(
      '1-1 8087:0024 hub, 1-1.3 147e:2016 "Biometric Coprocessor", 1-1.4 0a5c:217f "Broadcom Bluetooth Device", ' +
        '1-1.6 04f2:b221 "Integrated Camera"',
    );
    expect(ehci2.hiddenReason).toBeUndefined();
    expect(byPort(t420, '00_1d.0').data['usb-devices']).toBe('2-1 8087:0024 hub');
    // The Wi-Fi card behind root port 00:1c.1 gets a path, and its BDF as sbdf.
    expect(byPort(t420, '00_1c.1-00_00.0').data.sbdf).toBe('0000:03:00.0');
    // The disks are behind the AHCI controller, the keyboard and touchpad behind no PCI function.
    expect(byPort(t420, '00_1f.2').data.disks).toBe('sda "Hitachi HTS723232A7A364", sr0 "HL-DT-STDVDRAM GT33N"');
    expect(
      t420.some((d) => d.data['input-devices'] !== undefined && /keyboard/.test(String(d.data['input-devices']))),
    ).toBe(false);
  });

  it('hides the host bridge, the bridges and the display the host uses, with the reason', () => {
    const t420 = devices('LENOVO_T420.txt');
    expect(byPort(t420, '00_00.0').hiddenReason).toBe('the host bridge');
    expect(byPort(t420, '00_1c.0').hiddenReason).toBe('a bridge: bridges stay with the host');
    expect(byPort(t420, '00_1f.0').hiddenReason).toBe('a bridge: bridges stay with the host'); // the LPC (ISA) bridge
    expect(byPort(t420, '00_02.0').hiddenReason).toBe('the display the host uses');
    // The TOSHIBA's GeForce drives no display of the host (no driver, no DRM card): it can go.
    expect(byPort(devices('TOSHIBA_NVME.txt'), '00_01.0-00_00.0').hiddenReason).toBeUndefined();
  });

  it('usbkbd: the Kinesis keyboard sits behind three hubs on the EHCI controller 00_1a.0', () => {
    const [ehci] = devices('usbkbd.umockdev');
    expect(ehci.port.portId).toBe('00_1a.0');
    expect(ehci.deviceId).toBe('0x8086:0x3b3c::p0c0320');
    expect(ehci.data['input-devices']).toBe('input5 "HID 05f3:0007" (keyboard)');
    expect(String(ehci.data['usb-devices'])).toContain('1-1.5.4.2 05f3:0007 "Kinesis Advantage PRO MPC/USB Keyboard"');
    expect(String(ehci.data['usb-devices'])).toContain('1-1.5.4 05f3:0081 hub "Kinesis Keyboard Hub"');
  });

  it('Shuttle DH170: its only keyboard, the USB disk and the card reader are behind the xHCI 00_14.0', () => {
    const shuttle = devices('SHUTTLE_DH170_WITH_USB_DISK.txt');
    const xhci = byPort(shuttle, '00_14.0');
    expect(xhci.data['input-devices']).toBe('input6 "USB Keyboard" (keyboard)');
    expect(xhci.data.disks).toBe('sdb "STORAGE DEVICE", sdc');
    expect(xhci.hiddenReason).toBe('the host\'s only keyboard (input6 "USB Keyboard") is behind it');
    expect(byPort(shuttle, '00_17.0').data.disks).toBe('sda "CT500MX500SSD1"');
  });

  it('a software keyboard (uinput: keyd, input-remapper) is no keyboard the host keeps: 00_14.0 stays hidden', () => {
    const shuttle = recordings.get('SHUTTLE_DH170_WITH_USB_DISK.txt')!.tree;
    const withKeyd = new HostTree([...shuttle.devices(), keydVirtualKeyboard], shuttle.usage);
    const xhci = byPort(parsePciDevices(withKeyd, 'dom0', NO_PCI_NAMES), '00_14.0');
    expect(xhci.hiddenReason).toBe('the host\'s only keyboard (input6 "USB Keyboard") is behind it');
  });

  it('HP EliteBook 835 G10: four xHCI controllers behind two bridges, the sticks on two of them', () => {
    const hp = devices('HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt');
    const xhci = hp.filter((d) => d.interfaces[0] === 'p0c0330');
    expect(xhci.map((d) => [d.port.portId, d.data.sbdf])).toEqual([
      ['00_08.1-00_00.3', '0000:c3:00.3'],
      ['00_08.1-00_00.4', '0000:c3:00.4'],
      ['00_08.3-00_00.3', '0000:c5:00.3'],
      ['00_08.3-00_00.4', '0000:c5:00.4'],
    ]);
    expect(byPort(hp, '00_08.1-00_00.3').data.disks).toBe('sdb "USB DISK 3.0"');
    // The Samsung Type-C stick sits behind a Genesys hub, with the RTL8153 Ethernet adapter.
    expect(String(byPort(hp, '00_08.3-00_00.4').data['usb-devices'])).toBe(
      '7-1 05e3:0610 hub "USB2.1 Hub", 8-1 05e3:0626 hub "USB3.1 Hub", 8-1.3 090c:1000 "Type-C", ' +
        '8-1.4 0bda:8153 "USB 10/100/1000 LAN"',
    );
    expect(byPort(hp, '00_08.3-00_00.4').data.disks).toBe('sda "Type-C"');
    expect(byPort(hp, '00_02.4-00_00.0').data.disks).toBe('nvme0n1 "MTFDKBA512TFH-1BC15ABHA"');
  });

  it('Dell (TOSHIBA NVMe): the touchscreen is behind the xHCI, the touchpad behind the I2C controller 00_15.1', () => {
    const dell = devices('TOSHIBA_NVME.txt');
    expect(byPort(dell, '00_14.0').data['input-devices']).toBe('input15 "Melfas LGDisplay Incell Touch" (touchscreen)');
    expect(String(byPort(dell, '00_15.1').data['input-devices'])).toContain('input13 "DLL07D1:01 044E:120B" (touchpad');
    expect(byPort(dell, '00_1d.0-00_00.0').data.disks).toBe('nvme0n1');
  });

  it('fido2: the IOMMU group comes from the recorded iommu_group link', () => {
    const [bridge, xhci] = devices('fido2.umockdev');
    expect(xhci.port.portId).toBe('00_08.1-00_00.3');
    expect(xhci.data).toMatchObject({
      sbdf: '0000:05:00.3',
      'iommu-group': '14',
      'iommu-group-devices': '0000:05:00.3',
    });
    expect(bridge.data['iommu-group']).toBe('6');
    expect(String(xhci.data['usb-devices'])).toContain('1-2.3 1050:0120 "Security Key by Yubico"');
  });

  (hasPciIds ? it : it.skip)('names vendors, devices and classes from pci.ids (hwdata)', () => {
    const ehci = byPort(devices('LENOVO_T420.txt'), '00_1a.0');
    expect(describeDevice(ehci)).toBe(
      'PCI_USB: Intel Corporation 6 Series/C200 Series Chipset Family USB Enhanced Host Controller #2',
    );
    expect(ehci.legacyDescription).toBe(
      'USB controller: Intel Corporation 6 Series/C200 Series Chipset Family USB Enhanced Host Controller #2',
    );
    expect(ehci.data['class-name']).toBe('EHCI');
  });

  it('without pci.ids, falls back to the names udev recorded', () => {
    const [ehci] = parsePciDevices(recordings.get('usbkbd.umockdev')!.tree, 'dom0', NO_PCI_NAMES);
    expect(describeDevice(ehci)).toBe(
      'PCI_USB: Intel Corporation 5 Series/3400 Series Chipset USB2 Enhanced Host Controller',
    );
    expect(ehci.legacyDescription).toBe(
      'USB controller: Intel Corporation 5 Series/3400 Series Chipset USB2 Enhanced Host Controller',
    );
  });
});

describe('PCI listing on this machine', () => {
  const tree = readHostTree(LOCAL_ROOTS);
  const listed = parsePciDevices(tree, 'dom0', systemPciNames());
  const sysfs = '/sys/bus/pci/devices';
  const functions = fs.existsSync(sysfs) ? fs.readdirSync(sysfs).sort() : [];

  (functions.length > 0 ? it : it.skip)(
    'lists every function of /sys/bus/pci with the ids and class sysfs gives',
    () => {
      expect(listed.map((d) => d.data.sbdf).sort()).toEqual(functions);
      for (const sbdf of functions) {
        const device = listed.find((d) => d.data.sbdf === sbdf)!;
        const read = (name: string) => fs.readFileSync(path.join(sysfs, sbdf, name), 'utf8').trim();
        expect(device.data['vendor-id']).toBe(read('vendor').slice(2));
        expect(device.data['device-id']).toBe(read('device').slice(2));
        expect(device.data.class).toBe(read('class').slice(2));
        const driver = fs.existsSync(path.join(sysfs, sbdf, 'driver'))
          ? path.basename(fs.readlinkSync(path.join(sysfs, sbdf, 'driver')))
          : undefined;
        expect(device.data.driver).toBe(driver);
        // Live sysfs says whether there is a reset: the `reset` file exists exactly when there is one.
        expect(device.data.reset === 'none').toBe(!fs.existsSync(path.join(sysfs, sbdf, 'reset')));
      }
    },
  );

  // The function the root filesystem's disk hangs off (a virtio-blk here) is the host's: hidden, in use.
  const root = rootDiskFunction();
  (root ? it : it.skip)(`hides the root disk's controller (${root?.sbdf}: ${root?.disk}) as in use`, () => {
    const device = listed.find((d) => d.data.sbdf === root!.sbdf)!;
    expect(device.hiddenReason).toMatch(new RegExp(`^the host uses ${root!.disk} behind it \\(`));
    expect(device.inUse).toBe(true);
  });
});

/** From /proc/self/mountinfo and /sys/dev/block: the disk `/` is on, and the PCI function above it. */
function rootDiskFunction(): { sbdf: string; disk: string } | undefined {
  const line = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[4] === '/');
  const majorMinor = line?.split(' ')[2];
  if (!majorMinor || !fs.existsSync(`/sys/dev/block/${majorMinor}`)) return undefined;
  let real = fs.realpathSync(`/sys/dev/block/${majorMinor}`);
  if (fs.existsSync(path.join(real, 'partition'))) real = path.dirname(real);
  const sbdf = real
    .split('/')
    .filter((p) => /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(p))
    .pop();
  return sbdf ? { sbdf, disk: path.basename(real) } : undefined;
}

describe('PciDriver', () => {
  it('discovers through a source, with the host’s pci.ids by default', async () => {
    const tree = recordings.get('fido2.umockdev')!.tree;
    const found = await firstValueFrom(new PciDriver().discover(staticSource(tree, 'dom0')));
    expect(found.map((d) => d.port.portId)).toEqual(['00_08.1', '00_08.1-00_00.3']);
  });

  it('lists a recorded machine through the kernel, and a recording hands nothing over', async () => {
    const kernel = new Kernel().load(pciModule);
    try {
      kernel.registerSource(new RecordedHostSource(recordedFixture('LENOVO_T420.txt'), 'dom0'));
      const manager = kernel.start();
      const visible = manager.list({ devclass: 'pci' }).map((d) => d.port.portId);
      expect(visible).toContain('00_1a.0');
      expect(visible).not.toContain('00_00.0'); // hidden: the host bridge
      expect(manager.list({ devclass: 'pci', includeHidden: true }).map((d) => d.port.portId)).toContain('00_00.0');
    } finally {
      kernel.dispose();
    }
  });
});
