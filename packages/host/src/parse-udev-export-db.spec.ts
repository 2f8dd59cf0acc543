import * as fs from 'node:fs';
import * as path from 'node:path';
import { HostTree, type RawDeviceRecord, sysname, usbDeviceAbove, usbIds } from '@devgate/core';
import { loadUdevExportDb, parseUdevExportDb } from './parse-udev-export-db.js';
import { expectRecordingError, recorded } from './testing/recordings';

function load(name: string): HostTree {
  return new HostTree(loadUdevExportDb(recorded(name)));
}

function blockNames(tree: HostTree): string[] {
  return tree
    .devices('block')
    .map((r) => sysname(r.devpath))
    .filter((name) => !/^(loop|ram)\d+$/.test(name))
    .sort();
}

function byDevname(tree: HostTree, devname: string): RawDeviceRecord {
  const found = tree.devices().find((r) => r.properties.DEVNAME === devname);
  if (!found) throw new Error(`no device ${devname}`);
  return found;
}

describe('parseUdevExportDb on the recordings', () => {
  it('KIOXIA_TransMemory.txt: a USB stick on a Raspberry Pi, sda and sda1 with ID_BUS=usb', () => {
    const records = loadUdevExportDb(recorded('KIOXIA_TransMemory.txt'));
    expect(records).toHaveLength(3);
    const tree = new HostTree(records);
    const stick = tree.device('/devices/platform/soc/3f980000.usb/usb1/1-1/1-1.1/1-1.1.2')!;
    expect(stick.subsystem).toBe('usb');
    expect(stick.properties.DEVTYPE).toBe('usb_device');
    expect(usbIds(stick)).toEqual({ vendorId: '30de', productId: '6544' });
    expect(stick.properties.ID_SERIAL_SHORT).toBe('0022CFF6BD70C670E32160AA');
    const sda = byDevname(tree, '/dev/sda');
    const sda1 = byDevname(tree, '/dev/sda1');
    expect([sda.properties.DEVTYPE, sda1.properties.DEVTYPE]).toEqual(['disk', 'partition']);
    expect([sda.properties.ID_BUS, sda1.properties.ID_BUS]).toEqual(['usb', 'usb']);
    expect(sda1.properties.ID_FS_TYPE).toBe('vfat');
    expect(sda1.properties.ID_FS_LABEL).toBe('KIOXIA');
    // Escapes stay raw; decoding them is the drivers' job.
    expect(sda.properties.ID_VENDOR_ENC).toBe('KIOXIA\\x20\\x20');
    // No sysfs attributes in this format; `L: 0` is a priority, not a link.
    expect(sda.attribute('size')).toBeUndefined();
    expect(sda.entries?.('holders')).toBeUndefined();
    expect(records[1].devlinks).toContain('disk/by-id/usb-KIOXIA_TransMemory_0022CFF6BD70C670E32160AA-0:0');
    expect(records[1].links.size).toBe(0);
    // The interface and SCSI levels are not recorded: the tree skips to the nearest recorded ancestor.
    expect(tree.parent(sda)).toBe(stick);
    expect(tree.parent(sda1)).toBe(sda);
    expect(usbDeviceAbove(tree, sda1)).toBe(stick);
  });

  it('HP_DVDRW_WITH_ISO9660_DISC.txt: sr0 with a disc, under its SCSI device', () => {
    const tree = load('HP_DVDRW_WITH_ISO9660_DISC.txt');
    expect(tree.size).toBe(2);
    const sr0 = byDevname(tree, '/dev/sr0');
    expect(sr0.properties.ID_CDROM_MEDIA).toBe('1');
    expect(sr0.properties.ID_CDROM_MEDIA_STATE).toBe('complete');
    expect(sr0.properties.ID_FS_TYPE).toBe('iso9660');
    expect(sr0.properties.ID_FS_LABEL).toBe('Data_disc_(10_Mar_26)');
    expect(sr0.properties.ID_BUS).toBe('ata');
    const scsi = tree.parent(sr0)!;
    expect(scsi.subsystem).toBe('scsi');
    expect(scsi.properties.DRIVER).toBe('sr');
    expect(scsi.properties.ID_MODEL_ENC).toBe('hp\\x20HLDS\\x20\\x20DVDRW\\x20\\x20GUD1N');
  });

  it('TOSHIBA_NVME.txt: the bare MODALIAS line is a property and parsing goes on', () => {
    const records = loadUdevExportDb(recorded('TOSHIBA_NVME.txt'));
    expect(records).toHaveLength(812);
    const tree = new HostTree(records);
    expect(tree.size).toBe(804); // eight i2c adapters are listed twice
    const hid = tree.device('/devices/pci0000:00/0000:00:14.0/usb1/1-9/1-9:1.0/0003:1FD2:6003.0001')!;
    expect(hid.subsystem).toBe('hid');
    expect(hid.properties.HID_UNIQ).toBe('');
    expect(hid.properties.MODALIAS).toBe('hid:b0003g0004v00001FD2p00006003');
    expect(tree.devices('hid')).toHaveLength(3);
    expect(tree.devices('hid').every((r) => r.properties.MODALIAS?.startsWith('hid:'))).toBe(true);
    // The same quirk follows every empty MEI_CL_NAME= (15 Intel ME clients).
    expect(tree.devices('mei').filter((r) => r.properties.MODALIAS?.startsWith('mei::'))).toHaveLength(15);
    // The NVMe namespace has no ID_BUS and no ID_MODEL in this older dump.
    expect(blockNames(tree)).toEqual(['nvme0n1', 'nvme0n1p1', 'nvme0n1p2', 'nvme0n1p3', 'nvme0n1p4']);
    const nvme = byDevname(tree, '/dev/nvme0n1');
    expect(nvme.devpath).toBe('/devices/pci0000:00/0000:00:1d.0/0000:3e:00.0/nvme/nvme0/nvme0n1');
    expect(nvme.properties.ID_BUS).toBeUndefined();
    expect(nvme.properties.ID_MODEL).toBeUndefined();
    expect(nvme.properties.ID_PART_TABLE_TYPE).toBe('gpt');
    const touch = tree.devices('usb').find((r) => sysname(r.devpath) === '1-9')!;
    expect(usbIds(touch)).toEqual({ vendorId: '1fd2', productId: '6003' });
    expect(tree.device('/devices/pci0000:00/0000:00:14.0')!.properties.DRIVER).toBe('xhci_hcd');
  });

  it('SHUTTLE_DH170_WITH_USB_DISK.txt: SATA sda, USB disks sdb and sdc, Primax keyboard', () => {
    const records = loadUdevExportDb(recorded('SHUTTLE_DH170_WITH_USB_DISK.txt'));
    expect(records).toHaveLength(868);
    const tree = new HostTree(records);
    expect(tree.size).toBe(862); // six i2c adapters are listed twice
    expect(blockNames(tree)).toEqual(['dm-0', 'sda', 'sda1', 'sda2', 'sda3', 'sdb', 'sdc', 'sdc1']);
    expect(byDevname(tree, '/dev/sda').properties.ID_BUS).toBe('ata');
    expect(byDevname(tree, '/dev/sda').properties.ID_MODEL).toBe('CT500MX500SSD1');
    const sdc = byDevname(tree, '/dev/sdc');
    expect(sdc.properties.ID_BUS).toBe('usb');
    // A no-name stick: no ID_MODEL at all, and an all-blank ID_MODEL_ENC.
    expect(sdc.properties.ID_MODEL).toBeUndefined();
    expect(sdc.properties.ID_MODEL_ENC).toBe('\\x20'.repeat(16));
    expect(usbIds(usbDeviceAbove(tree, sdc)!)).toEqual({ vendorId: 'abcd', productId: '1234' });
    expect(sysname(usbDeviceAbove(tree, byDevname(tree, '/dev/sdb'))!.devpath)).toBe('1-14');
    const keyboard = tree.devices('usb').find((r) => sysname(r.devpath) === '1-9')!;
    expect(usbIds(keyboard)).toEqual({ vendorId: '0461', productId: '0010' });
    const inputs = tree.descendants(keyboard, 'input').map((r) => sysname(r.devpath));
    expect(inputs).toEqual(expect.arrayContaining(['input6', 'input7']));
    expect(tree.devices('hid').every((r) => r.properties.MODALIAS?.startsWith('hid:'))).toBe(true);
  });

  it('LENOVO_T420.txt: two EHCI controllers with rate-matching hubs, sda (1, 2, 5) and sr0', () => {
    const tree = load('LENOVO_T420.txt');
    expect(tree.size).toBe(578);
    expect(blockNames(tree)).toEqual(['sda', 'sda1', 'sda2', 'sda5', 'sr0']);
    for (const slot of ['0000:00:1a.0', '0000:00:1d.0']) {
      expect(tree.device(`/devices/pci0000:00/${slot}`)!.properties.PCI_CLASS).toBe('C0320');
    }
    const hubs = tree
      .devices('usb')
      .filter((r) => r.properties.DEVTYPE === 'usb_device' && r.properties.PRODUCT === '8087/24/0');
    expect(hubs.map((r) => sysname(r.devpath)).sort()).toEqual(['1-1', '2-1']);
    expect(byDevname(tree, '/dev/sr0').properties.ID_MODEL).toBe('HL-DT-STDVDRAM_GT33N');
  });

  it('REALTEK_CARD_READER_AND_NVME.txt: old NVMe path, card reader as SCSI disk, "L: -100" ignored', () => {
    const tree = load('REALTEK_CARD_READER_AND_NVME.txt');
    expect(tree.size).toBe(852);
    expect(blockNames(tree)).toEqual([
      'nvme0n1',
      'nvme0n1p1',
      'nvme0n1p2',
      'nvme0n1p3',
      'nvme0n1p4',
      'sda',
      'sda1',
      'sdb',
    ]);
    expect(byDevname(tree, '/dev/nvme0n1').devpath).toBe('/devices/pci0000:00/0000:00:1d.0/0000:05:00.0/block/nvme0n1');
    expect(byDevname(tree, '/dev/sdb').properties.ID_MODEL).toBe('SD_MemoryStick');
    const rtc = tree.device('/devices/pnp0/00:02/rtc/rtc0')!;
    expect(rtc.properties.DEVNAME).toBe('/dev/rtc0');
    expect(rtc.properties.DEVLINKS).toBe('/dev/rtc');
  });

  it('HP_ELITEBOOK_835...txt: NVMe with a model, two USB sticks behind hubs, four xHCI', () => {
    const tree = load('HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt');
    expect(tree.size).toBe(1095);
    expect(blockNames(tree)).toEqual([
      'nvme0n1',
      'nvme0n1p1',
      'nvme0n1p2',
      'nvme0n1p3',
      'sda',
      'sda1',
      'sda2',
      'sda3',
      'sdb',
      'sdb1',
    ]);
    const nvme = byDevname(tree, '/dev/nvme0n1');
    expect(nvme.properties.ID_MODEL).toBe('MTFDKBA512TFH-1BC15ABHA');
    expect(nvme.properties.ID_PATH).toBe('pci-0000:02:00.0-nvme-1');
    expect(nvme.properties.ID_BUS).toBeUndefined();
    const typeC = usbDeviceAbove(tree, byDevname(tree, '/dev/sda2'))!;
    expect(sysname(typeC.devpath)).toBe('8-1.3');
    expect(usbIds(tree.parent(typeC)!)).toEqual({ vendorId: '05e3', productId: '0626' });
    const xhci = tree.devices('pci').filter((r) => r.properties.PCI_CLASS === 'C0330');
    expect(xhci.map((r) => sysname(r.devpath)).sort()).toEqual([
      '0000:c3:00.3',
      '0000:c3:00.4',
      '0000:c5:00.3',
      '0000:c5:00.4',
    ]);
    const elan = tree.devices('usb').find((r) => r.properties.PRODUCT === '4f3/c82/413')!;
    expect(elan.properties.ID_USB_INTERFACES).toMatch(/^:ff/);
  });
});

describe('parseUdevExportDb on malformed input', () => {
  const minimal = 'P: /devices/x\nE: SUBSYSTEM=usb\n';

  it('parses a minimal record, CRLF, udev-data style lines and unknown line types', () => {
    const records = parseUdevExportDb(
      `${minimal.replace(/\n/g, '\r\n')}\nP: /devices/y\nM: y\nR: 0\nJ: c1:2\nE:SUBSYSTEM=misc\nN: y\nL: -100\nQ: 3\nV: 1\n`,
    );
    expect(records.map((r) => [r.devpath, r.subsystem])).toEqual([
      ['/devices/x', 'usb'],
      ['/devices/y', 'misc'],
    ]);
    expect(records[1].properties).toEqual({ SUBSYSTEM: 'misc', DEVNAME: '/dev/y' });
    expect(parseUdevExportDb('')).toEqual([]);
  });

  it('takes a bare KEY=VALUE line as a property, but an E: line wins', () => {
    const [a, b] = parseUdevExportDb(`${minimal}MODALIAS=hid:x\n\n${minimal}E: MODALIAS=real\nMODALIAS=bare\n`);
    expect(a.properties.MODALIAS).toBe('hid:x');
    expect(b.properties.MODALIAS).toBe('real');
  });

  it('ignores noise lines inside a record', () => {
    const [record] = parseUdevExportDb(`${minimal}some words here\n:::\n\u0001\u0002\n`);
    expect(record.properties).toEqual({ SUBSYSTEM: 'usb' });
  });

  it('tolerates a record with no SUBSYSTEM', () => {
    const [record] = parseUdevExportDb('P: /devices/x\nE: FOO=1\n');
    expect(record.subsystem).toBe('');
  });

  it('rejects garbage and records without P:, with the line number', () => {
    expectRecordingError(() => parseUdevExportDb('\u0089PNG\r\n\u001a\n'), /line 1: .*must start with/);
    expectRecordingError(() => parseUdevExportDb(`${minimal}\n\nE: SUBSYSTEM=usb\n`), /line 5: .*must start with/);
    expectRecordingError(() => parseUdevExportDb(`${minimal}P: /devices/y\n`), /line 3: second P:/);
    expectRecordingError(() => parseUdevExportDb(`${minimal}E: NOEQUALS\n`), /line 3: malformed property line/);
  });

  it('rejects unsafe paths', () => {
    expectRecordingError(() => parseUdevExportDb('P: /devices/a/../../../etc\n'), /line 1: invalid device path/);
    expectRecordingError(() => parseUdevExportDb('P: devices/x\n'), /invalid device path/);
    expectRecordingError(() => parseUdevExportDb(`${minimal}N: ../../etc/shadow\n`), /invalid device node name/);
    expectRecordingError(() => parseUdevExportDb('P: /devices/x\nE: SUBSYSTEM=a/b\n'), /invalid SUBSYSTEM/);
  });

  it('parses a truncated dump up to the cut', () => {
    const full = fs.readFileSync(recorded('KIOXIA_TransMemory.txt'), 'utf8');
    const cut = full.slice(0, full.indexOf('E: ID_FS_LABEL=') + 'E: ID_FS'.length);
    expectRecordingError(() => parseUdevExportDb(cut), /malformed property line 'E: ID_FS'/);
    const cutInValue = full.slice(0, full.indexOf('E: ID_FS_LABEL=') + 'E: ID_FS_LABEL=KI'.length);
    const records = parseUdevExportDb(cutInValue);
    expect(records).toHaveLength(3);
    expect(records[2].properties.ID_FS_LABEL).toBe('KI');
  });

  it('bounds line length and refuses binary data', () => {
    expectRecordingError(
      () => parseUdevExportDb(`${minimal}E: BIG=${'x'.repeat(300 * 1024)}\n`),
      /line 3: line longer than/,
    );
    expectRecordingError(() => parseUdevExportDb(`${minimal}E: NUL=\0\n`), /line 3: NUL byte/);
  });

  it('reports an unreadable file with the coded error', () => {
    expectRecordingError(() => loadUdevExportDb(path.join(__dirname)), /not a regular file/);
  });
});
