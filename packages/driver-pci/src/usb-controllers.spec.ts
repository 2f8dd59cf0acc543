import { HostTree, type RawDeviceRecord, recordOf, sysname } from '@devgate/core';
import { type Recording, loadRecording } from '@devgate/host';
import { recordedFixture } from '@devgate/testkit';
import { NO_PCI_NAMES } from './pci-ids';
import { type ControllerReport, usbControllerReport } from './usb-controllers';
import { intelPchLayout, isolatedLayout, withIommuGroups } from './testing/iommu-groups';

const loaded = new Map<string, Recording>();
function tree(name: string): HostTree {
  if (!loaded.has(name)) loaded.set(name, loadRecording(recordedFixture(name)));
  return loaded.get(name)!.tree;
}
afterAll(() => loaded.forEach((r) => r.dispose()));

const SHUTTLE = 'SHUTTLE_DH170_WITH_USB_DISK.txt';
const TOSHIBA = 'TOSHIBA_NVME.txt';
const REALTEK = 'REALTEK_CARD_READER_AND_NVME.txt';
const T420 = 'LENOVO_T420.txt';
const HP = 'HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt';

function verdicts(reports: readonly ControllerReport[]): Record<string, string> {
  return Object.fromEntries(reports.map((r) => [r.sbdf, r.verdict]));
}

/** The same tree with what the host has mounted (`major:minor`), as /proc/self/mountinfo would say. */
function mounted(base: HostTree, ...devices: string[]): HostTree {
  return new HostTree(base.devices(), { mounted: new Set(devices), swaps: new Set() });
}

/** A live-like source: each PCI function's directory can be listed, and has no `reset` file. */
function withoutReset(base: HostTree, sbdf: string): HostTree {
  return new HostTree(
    base.devices().map((r): RawDeviceRecord =>
      r.subsystem === 'pci' && sysname(r.devpath) === sbdf
        ? {
            ...r,
            attribute: (n) => r.attribute(n),
            link: (n) => r.link?.(n),
            entries: (n) => (n === '.' ? ['class', 'config', 'vendor', 'device'] : undefined),
          }
        : r,
    ),
    base.usage,
  );
}

describe('devgate usb-controllers: verdicts on recorded machines', () => {
  it('Shuttle DH170 (desktop): every controller is unsafe, its only keyboard is behind the only xHCI', () => {
    const [xhci, ...others] = usbControllerReport(tree(SHUTTLE), NO_PCI_NAMES);
    expect(others).toEqual([]);
    expect(xhci).toMatchObject({ port: 'dom0:00_14.0', sbdf: '0000:00:14.0', kind: 'XHCI', verdict: 'unsafe' });
    expect(xhci.reasons).toEqual([
      'the host\'s only keyboard (input6 "USB Keyboard") is behind it: nothing would be left to type the disk passphrase or log in',
    ]);
    expect(xhci.notes).toContain(
      'USB storage behind it (sdb "STORAGE DEVICE", sdc): if the host boots from it (a live USB, an Anti Evil Maid stick), the host loses it',
    );
  });

  it('Dell laptop (TOSHIBA NVMe): every controller is unsafe, the touchscreen is behind the only xHCI', () => {
    const reports = usbControllerReport(tree(TOSHIBA), NO_PCI_NAMES);
    expect(verdicts(reports)).toEqual({ '0000:00:14.0': 'unsafe' });
    expect(reports[0].reasons).toEqual([
      'the host\'s touchscreen input15 "Melfas LGDisplay Incell Touch" is behind it',
    ]);
    // The built-in keyboard is on i8042: the host keeps one.
    expect(reports[0].notes).toContain('it is the only USB controller: the host keeps no USB port of its own');
  });

  it('ThinkPad T420: both EHCI controllers are safe (camera, fingerprint reader and Bluetooth only)', () => {
    const reports = usbControllerReport(tree(T420), NO_PCI_NAMES);
    expect(verdicts(reports)).toEqual({ '0000:00:1a.0': 'safe for a USB VM', '0000:00:1d.0': 'safe for a USB VM' });
    expect(reports[0].behind.usbDevices.map((u) => u.busid)).toEqual(['1-1', '1-1.3', '1-1.4', '1-1.6']);
    // An export-db dump records neither groups nor reset support: the report says so.
    expect(reports[0].notes).toEqual([
      'IOMMU group unknown (the source does not record groups)',
      'reset support unknown (the source does not record it)',
    ]);
  });

  it('HP EliteBook 835 G10 with isolated groups: four safe xHCIs, the recovery sticks noted', () => {
    const reports = usbControllerReport(withIommuGroups(tree(HP), isolatedLayout(tree(HP))), NO_PCI_NAMES);
    expect(verdicts(reports)).toEqual({
      '0000:c3:00.3': 'safe for a USB VM',
      '0000:c3:00.4': 'safe for a USB VM',
      '0000:c5:00.3': 'safe for a USB VM',
      '0000:c5:00.4': 'safe for a USB VM',
    });
    expect(reports.map((r) => r.notes.filter((n) => n.startsWith('USB storage')).length)).toEqual([1, 0, 0, 1]);
    expect(reports.every((r) => r.groupMembers.length === 0 && r.iommuGroup !== null)).toBe(true);
  });

  it(
    'Dell laptop (Realtek card reader) with the Intel PCH layout: the only safe choice shares its IOMMU group ' +
      'with 00:14.2, which goes along (layout of 100-series and later PCHs, laid over the real recording)',
    () => {
      const realtek = withIommuGroups(tree(REALTEK), intelPchLayout(tree(REALTEK)));
      const [xhci, ...others] = usbControllerReport(realtek, NO_PCI_NAMES);
      expect(others).toEqual([]);
      expect(xhci.verdict).toBe('safe for a USB VM');
      expect(xhci.groupMembers).toEqual(['0000:00:14.2']);
      expect(xhci.notes[0]).toMatch(
        /^it shares IOMMU group \d+ with 0000:00:14\.2 \(p118000: Intel Corporation [^)]+\), which goes to vfio-pci with it$/,
      );
    },
  );

  it('a group shared with a function the host needs makes it unsafe (the xHCI grouped with the AHCI of the root disk)', () => {
    const base = mounted(tree(REALTEK), '8:1'); // sda1 is the root filesystem
    const pch = intelPchLayout(base);
    const layout: Record<string, number> = { ...pch, '0000:00:17.0': pch['0000:00:14.0'] };
    const [xhci] = usbControllerReport(withIommuGroups(base, layout), NO_PCI_NAMES);
    expect(xhci.verdict).toBe('unsafe');
    expect(xhci.reasons).toEqual([
      `it shares IOMMU group ${layout['0000:00:14.0']} with 0000:00:17.0, which the host needs (the host uses sda behind it (sda1 mounted))`,
    ]);
  });

  it('a group shared with a controller that has the host’s keyboard: both would go, so it is unsafe', () => {
    // The T420's two EHCI controllers laid in one group (as behind a bridge without ACS), a USB keyboard
    // plugged into the second one (the laptop keeps its own keyboard, so nothing is hidden).
    const base = tree(T420);
    const keyboard = recordOf('/devices/pci0000:00/0000:00:1d.0/usb2/2-1/2-1.2/2-1.2:1.0/input/input20', 'input', {
      ID_INPUT: '1',
      ID_INPUT_KEYBOARD: '1',
      NAME: '"USB Keyboard"',
    });
    const grouped = withIommuGroups(new HostTree([...base.devices(), keyboard]), {
      '0000:00:1a.0': 3,
      '0000:00:1d.0': 3,
    });
    const [ehci2] = usbControllerReport(grouped, NO_PCI_NAMES);
    expect(ehci2.verdict).toBe('unsafe');
    expect(ehci2.reasons).toEqual([
      'it shares IOMMU group 3 with 0000:00:1d.0, which has the host\'s keyboard input20 "USB Keyboard" behind it',
    ]);
  });

  it('booted from the USB disk: the controller holding it is unsafe', () => {
    const [xhci] = usbControllerReport(mounted(tree(SHUTTLE), '8:33'), NO_PCI_NAMES); // sdc1
    expect(xhci.reasons).toContain('the host uses the disk sdc behind it (sdc1 mounted)');
  });

  it('no reset, or no IOMMU on the host: impractical', () => {
    const [noReset] = usbControllerReport(withoutReset(tree(T420), '0000:00:1a.0'), NO_PCI_NAMES);
    expect(noReset.verdict).toBe('impractical');
    expect(noReset.reasons).toEqual([
      'it supports no reset: the USB VM may fail to start, and -o no-strict-reset=True may leak data between VMs',
    ]);
    const reports = usbControllerReport(tree(T420), NO_PCI_NAMES, { iommu: 'absent' });
    expect(verdicts(reports)).toEqual({ '0000:00:1a.0': 'impractical', '0000:00:1d.0': 'impractical' });
    expect(reports[0].reasons).toEqual(['this host has no IOMMU: VFIO cannot isolate the controller from the host']);
  });

  it('a recording of one device: says what it cannot know, and a keyboard behind it is still unsafe', () => {
    const [ehci] = usbControllerReport(tree('usbkbd.umockdev'), NO_PCI_NAMES);
    expect(ehci.verdict).toBe('unsafe');
    expect(ehci.reasons).toEqual(['the host\'s keyboard input5 "HID 05f3:0007" is behind it']);
    expect(ehci.notes[0]).toBe('the source holds only part of the machine: other controllers and keyboards may exist');
    // A dump of USB devices only: the Holtek keyboard is known by its HID boot interface.
    const [xhci] = usbControllerReport(tree('usbkbd.pcap.umockdev'), NO_PCI_NAMES);
    expect(xhci.reasons).toEqual(['the host\'s keyboard 1-3 "USB Keyboard" is behind it']);
    // fido2 has a real IOMMU group: nothing shares it.
    const [raven] = usbControllerReport(tree('fido2.umockdev'), NO_PCI_NAMES);
    expect(raven).toMatchObject({ verdict: 'safe for a USB VM', iommuGroup: '14', groupMembers: [] });
  });
});
