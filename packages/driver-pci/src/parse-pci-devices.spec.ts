import { HostTree, type RawDeviceRecord, recordOf } from '@devgate/core';
import { loadRecording } from '@devgate/host';
import { UNSAFE_CHARACTERS, allStrings, recordedFixture } from '@devgate/testkit';
import { readPciFunctions } from './parse-pci-devices';
import { parsePciDevices } from './pci-devices';
import { NO_PCI_NAMES } from './pci-ids';

const ROOT = '/devices/pci0000:00';

describe('parse-pci-devices: what a device or a recording says is checked, never trusted', () => {
  it('takes ids, class, driver and group only in their strict forms', () => {
    const tree = new HostTree([
      recordOf(`${ROOT}/0000:00:00.0`, 'pci', { PCI_ID: '8086:1237', PCI_CLASS: '60000' }),
      recordOf(
        `${ROOT}/0000:00:14.0`,
        'pci',
        { DRIVER: 'xhci_hcd; rm -rf /', PCI_CLASS: 'C0330' },
        { vendor: '0x8086zz', device: '0x12345', reset_method: 'flr ../../x bus' },
        {},
        { iommu_group: '../../../kernel/iommu_groups/../../etc', driver: '../../bus/pci/drivers/x\u001b[2J' },
      ),
      recordOf(
        `${ROOT}/0000:00:15.0`,
        'pci',
        { PCI_ID: '8086:a123' },
        {},
        {},
        { iommu_group: 'kernel/iommu_groups/7' },
      ),
      recordOf(`${ROOT}/0000:00:16.0`, 'pci', { MODALIAS: 'pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00' }),
      // Not PCI functions, whatever they call themselves.
      recordOf(`${ROOT}/0000:00:1g.0`, 'pci', { PCI_ID: '8086:ffff' }),
      recordOf(`${ROOT}/0000:00:14.0/../0000:00:13.0`, 'pci', { PCI_ID: '8086:ffff' }),
    ]);
    const functions = readPciFunctions(tree, NO_PCI_NAMES);
    expect(functions.map((f) => f.sbdf)).toEqual(['0000:00:00.0', '0000:00:14.0', '0000:00:15.0', '0000:00:16.0']);
    const xhci = functions[1];
    expect(xhci).toMatchObject({ vendorId: '0000', deviceId: '0000', classCode: 0x0c0330, driver: undefined });
    expect(xhci.iommuGroup).toBeUndefined();
    expect(xhci.reset).toEqual({ supported: true, methods: ['flr', 'bus'] });
    expect(functions[2]).toMatchObject({ vendorId: '8086', deviceId: 'a123', iommuGroup: '7' });
    expect(functions[3]).toMatchObject({ vendorId: '1af4', deviceId: '1041', classCode: 0x020000 });
  });

  it('survives a fuzzer’s mutations of every attribute, property and link of a recorded machine', () => {
    const recording = loadRecording(recordedFixture('fido2.umockdev'));
    const t420 = loadRecording(recordedFixture('LENOVO_T420.txt'));
    try {
      const base = [...recording.tree.devices(), ...t420.tree.devices()];
      let random = 4242;
      const next = () => (random = (random * 1103515245 + 12345) % 2 ** 31);
      const nasty = [
        '',
        '0x',
        '-1',
        '0xffffffffffff',
        '../../../../etc/passwd',
        'kernel/iommu_groups/../../1',
        '\u0000',
        '\u001b]0;pwned\u0007',
        '\u202e',
        'x'.repeat(100_000),
        '"quoted"',
        'C0330 extra',
        'ffffffffffffffff ffffffffffffffff ffffffffffffffff',
      ];
      const pick = () => nasty[next() % nasty.length];
      const mutate = (record: RawDeviceRecord): RawDeviceRecord => {
        const properties: Record<string, string> = {};
        for (const [key, value] of Object.entries(record.properties))
          properties[key] = next() % 3 === 0 ? pick() : value;
        const chosen = next() % 4;
        return {
          devpath: record.devpath,
          subsystem: record.subsystem,
          properties,
          attribute: (name) => (chosen === 0 ? pick() : record.attribute(name)),
          entries: (name) => (chosen === 1 ? [pick(), '0000:00:14.0', pick()] : record.entries?.(name)),
          link: (name) => (chosen === 2 ? pick() : record.link?.(name)),
        };
      };
      for (let round = 0; round < 200; round++) {
        const devices = parsePciDevices(new HostTree(base.map(mutate)), 'dom0', NO_PCI_NAMES);
        for (const device of devices) {
          expect(device.port.portId).toMatch(
            /^([0-9a-f]{4,8}_)?[0-9a-f]{2}_[0-1][0-9a-f]\.[0-7](-[0-9a-f]{2}_[0-1][0-9a-f]\.[0-7])*$/,
          );
          expect(device.deviceId).toMatch(/^0x[0-9a-f]{4}:0x[0-9a-f]{4}::p[0-9a-f]{6}$/);
          expect(String(device.data['iommu-group'] ?? '1')).toMatch(/^\d{1,6}$/);
          expect(String(device.data.driver ?? 'x')).toMatch(/^[A-Za-z0-9_.+-]{1,64}$/);
        }
        for (const [at, text] of allStrings(devices)) {
          if (UNSAFE_CHARACTERS.test(text)) throw new Error(`unsafe character at ${at}: ${JSON.stringify(text)}`);
          expect(text.length).toBeLessThanOrEqual(8192);
        }
      }
    } finally {
      recording.dispose();
      t420.dispose();
    }
  });
});
