import { formatSbdf, legacyPortId, parseSbdf, pciPortId } from './pci-address';

describe("Qubes' PCI port ids", () => {
  it('keeps the BDF form for a device on the root bus', () => {
    expect(pciPortId('/devices/pci0000:00/0000:00:14.0')).toBe('00_14.0');
    expect(pciPortId('/devices/pci0000:80/0000:80:01.0')).toBe('80_01.0');
  });

  it('writes one hop per bridge, each relative to the bridge’s secondary bus (Qubes 4.3’s example)', () => {
    expect(pciPortId('/devices/pci0000:00/0000:00:08.1/0000:c1:00.0')).toBe('00_08.1-00_00.0');
    expect(pciPortId('/devices/pci0000:00/0000:00:1c.4/0000:05:00.0/0000:06:02.0/0000:07:00.3')).toBe(
      '00_1c.4-00_00.0-00_02.0-00_00.3',
    );
    // A bridge whose secondary bus is below the child's bus (sysfs says so): the offset shows.
    expect(pciPortId('/devices/pci0000:00/0000:00:01.0/0000:03:00.0', () => 2)).toBe('00_01.0-01_00.0');
  });

  it('prefixes a segment other than 0000', () => {
    expect(pciPortId('/devices/pci10000:e0/10000:e0:06.0/10000:e1:00.0')).toBe('10000_e0_06.0-00_00.0');
  });

  it('parses and formats SBDFs strictly', () => {
    expect(parseSbdf('0000:00:1f.6')).toEqual({ segment: 0, bus: 0, device: 0x1f, fn: 6 });
    expect(parseSbdf('0000:00:20.0')).toBeUndefined(); // device numbers are 5 bits
    expect(parseSbdf('0000:00:1f.8')).toBeUndefined();
    expect(parseSbdf('00:1f.6')).toBeUndefined();
    expect(formatSbdf({ segment: 0, bus: 0xc3, device: 0, fn: 3 })).toBe('0000:c3:00.3');
    expect(legacyPortId(parseSbdf('0000:c3:00.3')!)).toBe('c3_00.3');
  });
});
