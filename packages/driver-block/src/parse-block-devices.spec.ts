import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type DeviceInfo, describeDevice } from '@devgate/core';
import { loadRecording } from '@devgate/host';
import { UNSAFE_CHARACTERS, describeDriverConformance, recordedFixture } from '@devgate/testkit';
import { BlockDriver } from './block-driver';
import { parseBlockDevices } from './parse-block-devices';

// Block devices of real machines, from their recordings (read from shared/, never copied).
const RECORDINGS = [
  'SHUTTLE_DH170_WITH_USB_DISK.txt',
  'HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt',
  'KIOXIA_TransMemory.txt',
  'LENOVO_T420.txt',
  'TOSHIBA_NVME.txt',
  'REALTEK_CARD_READER_AND_NVME.txt',
  'HP_DVDRW_WITH_ISO9660_DISC.txt',
  'simple-nvme.tar.xz',
];

const loaded = new Map(RECORDINGS.map((name) => [name, loadRecording(recordedFixture(name))]));
afterAll(() => loaded.forEach((recording) => recording.dispose()));

function devices(name: string, backend = 'dom0'): Map<string, DeviceInfo> {
  return new Map(parseBlockDevices(loaded.get(name)!.tree, backend).map((d) => [d.port.portId, d]));
}

describeDriverConformance('block', {
  createDriver: () => new BlockDriver(),
  trees: () => Object.fromEntries([...loaded].map(([name, recording]) => [name, recording.tree])),
});

describe('block devices of recorded machines', () => {
  it('Shuttle DH170: a SATA SSD, and a USB disk whose partition carries the stick’s identity', () => {
    const found = devices('SHUTTLE_DH170_WITH_USB_DISK.txt', 'sys-usb');
    expect([...found.keys()]).toEqual(expect.arrayContaining(['sda', 'sda1', 'sda2', 'sda3', 'sdb', 'sdc', 'sdc1']));
    const sdc = found.get('sdc')!;
    const sdc1 = found.get('sdc1')!;
    expect(sdc.parent).toEqual({ devclass: 'usb', backend: 'sys-usb', portId: '1-4' });
    expect(sdc.deviceId).toMatch(/^abcd:1234:.*:1\.0$/);
    expect(sdc1.deviceId).toBe(`${sdc.deviceId}:1`);
    expect(sdc1.data).toMatchObject({ label: 'STORAGE', 'fs-type': 'vfat', partition: 1 });
    // The model is sixteen escaped spaces: no model, so the label alone names it.
    expect(describeDevice(sdc1)).toBe('Block_Storage: sub-device of sys-usb:sdc (STORAGE)');
    expect(found.get('sda')!.parent).toBeUndefined();
    expect(found.get('sda')!.deviceId).toBe('0000:0000::?******:None');
    expect(found.get('sda2')!.deviceId).toBe('0000:0000::?******:None:2');
  });

  it('HP DVD-RW with a disc: the CD is read-only, described by its model and label', () => {
    const sr0 = devices('HP_DVDRW_WITH_ISO9660_DISC.txt').get('sr0')!;
    expect(sr0.hiddenReason).toBeUndefined();
    expect(sr0.data['read-only']).toBe(true);
    expect(sr0.legacyDescription).toBe('hp_HLDS_DVDRW_GUD1N (Data_disc_(10_Mar_26))');
  });

  it('KIOXIA stick on a Raspberry Pi: no PCI controller, still a USB parent', () => {
    const found = devices('KIOXIA_TransMemory.txt');
    expect(found.get('sda')!.parent).toEqual({ devclass: 'usb', backend: 'dom0', portId: '1-1.1.2' });
    expect(found.get('sda1')!.parent).toEqual({ devclass: 'block', backend: 'dom0', portId: 'sda' });
  });

  it('NVMe namespaces with and without the nvme/nvmeN level (old and new kernels)', () => {
    for (const name of ['TOSHIBA_NVME.txt', 'REALTEK_CARD_READER_AND_NVME.txt']) {
      const found = devices(name);
      expect(found.has('nvme0n1')).toBe(true);
      expect(found.get('nvme0n1p2')!.parent).toEqual({ devclass: 'block', backend: 'dom0', portId: 'nvme0n1' });
      expect(found.get('nvme0n1p2')!.data.partition).toBe(2);
    }
  });

  it('an lsblk sysfs dump: sizes, models from sysfs, partitions, and the mounted root hidden', () => {
    const found = devices('simple-nvme.tar.xz');
    expect(found.get('nvme0n1')!.data.model).toBeDefined();
    expect(typeof found.get('sda1')!.data.size).toBe('number');
    expect([...found.keys()].filter((n) => n.startsWith('nvme0n1p'))).toEqual(['nvme0n1p1', 'nvme0n1p2', 'nvme0n1p3']);
    const hidden = [...found.values()].filter((d) => d.hiddenReason);
    expect(hidden.length).toBeGreaterThan(0);
    for (const device of hidden) expect(device.hiddenReason).toMatch(/^(mounted|swap|partition \S+ is in use)$/);
  });
});

describe('holders a recording or a backend’s agent names', () => {
  // A reviewer's recording: the holder's name is a terminal title and a screen clear. The agent
  // protocol lets an entry name be anything but `/` and NUL, and so does a recording's `L:` line.
  const HOSTILE = 'dm-0\u001b]0;PWNED\u0007\u001b[2J\u202eexe.pdf';
  const loop = (name: string, holders: readonly string[], devtype = 'disk') =>
    [
      `P: /devices/virtual/block/${name.replace(/^(loop\d+)(p\d+)$/, '$1/$1$2')}`,
      `N: ${name}`,
      `E: DEVTYPE=${devtype}`,
      'E: MAJOR=7',
      `E: MINOR=${/\d+$/.exec(name)![0]}`,
      'E: SUBSYSTEM=block',
      'A: size=2048',
      ...(devtype === 'disk' ? [`A: loop/backing_file=/var/lib/images/${name}.img`] : []),
      ...holders.map((holder) => `L: holders/${holder}=../../${holder.slice(0, 4)}`),
    ].join('\n');

  let found: Map<string, DeviceInfo>;
  beforeAll(() => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-holders-'));
    try {
      const file = path.join(dir, 'hostile-holders.umockdev');
      const records = [
        loop('loop0', [HOSTILE]),
        loop('loop1', ['dm-1', HOSTILE]),
        loop('loop2', []),
        loop('loop2p1', [HOSTILE], 'partition'),
        loop('loop3', ['dm-0', 'dm-1', 'dm-2', 'dm-3', 'dm-4', 'dm-5']),
      ];
      fs.writeFileSync(file, records.join('\n\n') + '\n');
      const recording = loadRecording(file);
      found = new Map(parseBlockDevices(recording.tree, 'sys-usb').map((d) => [d.port.portId, d]));
      recording.dispose();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('counts a holder whose name is not a kernel name: no escapes in the reason, still in use', () => {
    const loop0 = found.get('loop0')!;
    expect(loop0.hiddenReason).toBe('in use by 1 device');
    expect(loop0.inUse).toBe(true);
    expect(found.get('loop1')).toMatchObject({ hiddenReason: 'in use by dm-1 and 1 other device', inUse: true });
    for (const device of found.values()) expect(device.hiddenReason ?? '').not.toMatch(UNSAFE_CHARACTERS);
  });

  it('keeps a disk busy while its partition is held by such a name', () => {
    expect(found.get('loop2p1')).toMatchObject({ hiddenReason: 'in use by 1 device', inUse: true });
    expect(found.get('loop2')).toMatchObject({ hiddenReason: 'partition loop2p1 is in use', inUse: true });
  });

  it('names a few holders and counts the rest, so the reason stays short', () => {
    expect(found.get('loop3')!.hiddenReason).toBe('in use by dm-0, dm-1, dm-2, dm-3 and 2 other devices');
  });
});
