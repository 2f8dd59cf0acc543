import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type DeviceInfo, HostTree, type RawDeviceRecord, describeDevice, recordOf } from '@devgate/core';
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

describe('a disk its backend uses as a whole', () => {
  // A USB stick written with a hybrid ISO has a filesystem on the whole disk and partitions inside
  // it; a disk can also be held whole (multipath, a LUKS mapping of the raw disk).
  const usbDisk = '/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb';
  const disk = (attributes: Record<string, string> = {}, entries: Record<string, readonly string[]> = {}) =>
    recordOf(
      usbDisk,
      'block',
      { DEVNAME: '/dev/sdb', DEVTYPE: 'disk', MAJOR: '8', MINOR: '16', ID_FS_TYPE: 'iso9660' },
      { size: '61440', ...attributes },
      entries,
    );
  const partition = (n: number) =>
    recordOf(
      `${usbDisk}/sdb${n}`,
      'block',
      { DEVNAME: `/dev/sdb${n}`, DEVTYPE: 'partition', MAJOR: '8', MINOR: String(16 + n), PARTN: String(n) },
      { size: '2048', partition: String(n) },
    );
  const listed = (records: RawDeviceRecord[], mounted: string[] = []) =>
    new Map(
      parseBlockDevices(new HostTree(records, { mounted: new Set(mounted), swaps: new Set() }), 'dom0').map((d) => [
        d.port.portId,
        d,
      ]),
    );

  it('offers none of its partitions while the whole disk is mounted', () => {
    const found = listed([disk(), partition(1), partition(2)], ['8:16']);
    expect(found.get('sdb')).toMatchObject({ hiddenReason: 'mounted', inUse: true });
    for (const name of ['sdb1', 'sdb2']) {
      expect(found.get(name)).toMatchObject({ hiddenReason: 'disk sdb is in use', inUse: true });
    }
  });

  it('offers none of its partitions while the whole disk is held', () => {
    const found = listed([disk({}, { holders: ['dm-3'] }), partition(1)]);
    expect(found.get('sdb')).toMatchObject({ hiddenReason: 'in use by dm-3', inUse: true });
    expect(found.get('sdb1')).toMatchObject({ hiddenReason: 'disk sdb is in use', inUse: true });
  });

  it('still offers the siblings of a mounted partition', () => {
    const found = listed([disk(), partition(1), partition(2)], ['8:17']);
    expect(found.get('sdb')).toMatchObject({ hiddenReason: 'partition sdb1 is in use' });
    expect(found.get('sdb2')!.hiddenReason).toBeUndefined();
  });
});

describe('a loop device whose backing file is a block device', () => {
  // `losetup -r /dev/loop0 /dev/sdb` (a read-only view for forensics, or an offset into a disk): the
  // kernel gives sdb no holder for it, yet both nodes reach the same blocks.
  const sdb = '/devices/pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0/block/sdb';
  const records = (backing: string) => [
    recordOf(sdb, 'block', { DEVNAME: '/dev/sdb', DEVTYPE: 'disk', MAJOR: '8', MINOR: '16' }, { size: '61440' }),
    recordOf(
      `${sdb}/sdb1`,
      'block',
      { DEVNAME: '/dev/sdb1', DEVTYPE: 'partition', MAJOR: '8', MINOR: '17' },
      { size: '2048', partition: '1' },
    ),
    recordOf(
      '/devices/virtual/block/loop0',
      'block',
      { DEVNAME: '/dev/loop0', DEVTYPE: 'disk', MAJOR: '7', MINOR: '0' },
      { size: '2048', ro: '1', 'loop/backing_file': backing },
    ),
  ];
  const listed = (backing: string) =>
    new Map(parseBlockDevices(new HostTree(records(backing)), 'dom0').map((d) => [d.port.portId, d]));

  it('marks the backing disk in use by the loop device, and its partitions with it', () => {
    const found = listed('/dev/sdb');
    expect(found.get('loop0')!.hiddenReason).toBeUndefined();
    expect(found.get('sdb')).toMatchObject({ hiddenReason: 'in use by loop0', inUse: true });
    expect(found.get('sdb1')).toMatchObject({ hiddenReason: 'disk sdb is in use', inUse: true });
  });

  it('marks a backing partition in use, and its disk with it', () => {
    const found = listed('/dev/sdb1');
    expect(found.get('sdb1')).toMatchObject({ hiddenReason: 'in use by loop0', inUse: true });
    expect(found.get('sdb')).toMatchObject({ hiddenReason: 'partition sdb1 is in use', inUse: true });
  });

  it('leaves alone a device whose name a file only resembles', () => {
    for (const backing of ['/var/lib/images/sdb', '/dev/sdb (deleted)', '/dev/shm/sdb', '/devsdb']) {
      expect(listed(backing).get('sdb')!.hiddenReason).toBeUndefined();
    }
  });
});

describe('loop devices over one file', () => {
  // `losetup -f disk.img` run twice, or an image mounted with `-o loop` and set up again: one disk
  // under two names.
  const loop = (n: number, file: string) => [
    recordOf(
      `/devices/virtual/block/loop${n}`,
      'block',
      { DEVNAME: `/dev/loop${n}`, DEVTYPE: 'disk', MAJOR: '7', MINOR: String(n) },
      { size: '2048', 'loop/backing_file': file },
    ),
    recordOf(
      `/devices/virtual/block/loop${n}/loop${n}p1`,
      'block',
      { DEVNAME: `/dev/loop${n}p1`, DEVTYPE: 'partition', MAJOR: '259', MINOR: String(n) },
      { size: '1024', partition: '1' },
    ),
  ];
  const hidden = (records: RawDeviceRecord[], mounted: string[] = []) =>
    Object.fromEntries(
      parseBlockDevices(new HostTree(records, { mounted: new Set(mounted), swaps: new Set() }), 'dom0').map((d) => [
        d.port.portId,
        d.hiddenReason ?? 'offered',
      ]),
    );

  it('offers the lowest-numbered one and hides the others with their partitions', () => {
    expect(hidden([...loop(12, '/srv/a.img'), ...loop(3, '/srv/a.img'), ...loop(7, '/srv/b.img')])).toEqual({
      loop12: 'same file as loop3',
      loop12p1: 'same file as loop3',
      loop3: 'offered',
      loop3p1: 'offered',
      loop7: 'offered',
      loop7p1: 'offered',
    });
  });

  it('hides an image a .qubes-exclude-block-devices file excludes, with its partitions', () => {
    const tree = new HostTree([...loop(3, '/var/lib/vms/a.img'), ...loop(4, '/srv/b.img')], {
      mounted: new Set(),
      swaps: new Set(),
      excludedLoops: new Set(['7:3']),
    });
    const reasons = Object.fromEntries(parseBlockDevices(tree, 'dom0').map((d) => [d.port.portId, d.hiddenReason]));
    expect(reasons).toEqual({
      loop3: 'excluded (.qubes-exclude-block-devices)',
      loop3p1: 'excluded (.qubes-exclude-block-devices)',
      loop4: undefined,
      loop4p1: undefined,
    });
  });

  it('offers none of them while the host uses one: the one in use keeps its own reason', () => {
    expect(hidden([...loop(3, '/srv/a.img'), ...loop(12, '/srv/a.img')], ['259:12'])).toEqual({
      loop3: 'same file as loop12',
      loop3p1: 'same file as loop12',
      loop12: 'partition loop12p1 is in use',
      loop12p1: 'mounted',
    });
  });
});

describe('labels in Qubes’ one-line description', () => {
  const partition = (properties: Record<string, string>) =>
    recordOf(
      '/devices/virtual/block/loop1/loop1p1',
      'block',
      { DEVNAME: '/dev/loop1p1', DEVTYPE: 'partition', MAJOR: '259', MINOR: '0', ID_MODEL: 'Cruzer', ...properties },
      { size: '2048', partition: '1' },
    );
  const described = (properties: Record<string, string>) =>
    parseBlockDevices(new HostTree([partition(properties)]), 'dom0')[0];

  it('writes the label as udev’s ID_FS_LABEL has it (blanks as `_`), as Qubes’ desc does', () => {
    // udev sets both; blkid run by devgate itself (no udevd) gives the label as it is.
    const fromUdev = { ID_FS_LABEL: 'My_Stick', ID_FS_LABEL_ENC: 'My\\x20Stick' };
    const fromBlkid = { ID_FS_LABEL: 'My Stick' };
    for (const properties of [fromUdev, fromBlkid]) {
      const device = described(properties);
      expect(device.legacyDescription).toBe('Cruzer (My_Stick)');
      expect(device).toMatchObject({ name: 'Cruzer (My Stick)', data: { label: 'My Stick' } });
    }
  });
});

describe('device-mapper devices, by Qubes’ rules', () => {
  const dm = (n: number, properties: Record<string, string> = {}, attributes: Record<string, string> = {}) =>
    recordOf(
      `/devices/virtual/block/dm-${n}`,
      'block',
      { DEVNAME: `/dev/dm-${n}`, DEVTYPE: 'disk', MAJOR: '254', MINOR: String(n), ...properties },
      { size: '2048', ...attributes },
    );
  const hidden = (records: RawDeviceRecord[], heldOpen?: string[]) =>
    Object.fromEntries(
      parseBlockDevices(
        new HostTree(records, {
          mounted: new Set(),
          swaps: new Set(),
          ...(heldOpen ? { heldOpen: new Set(heldOpen) } : {}),
        }),
        'dom0',
      ).map((d) => [d.port.portId, d.hiddenReason ?? 'offered']),
    );

  it('hides a dm device some program holds open, and offers it once closed', () => {
    const records = [dm(0, { DM_NAME: 'vg-work' }), dm(1, { DM_NAME: 'vg-spare' })];
    expect(hidden(records, ['254:0'])).toEqual({ 'dm-0': 'open', 'dm-1': 'offered' });
    expect(hidden(records, [])).toEqual({ 'dm-0': 'offered', 'dm-1': 'offered' });
    // Not known (a backend that cannot tell): offered, and the hand-over asks again.
    expect(hidden(records)).toEqual({ 'dm-0': 'offered', 'dm-1': 'offered' });
  });

  it('hides what udev’s dm rules leave alone, and what a rule excludes, unless a rule exports it', () => {
    const records = [
      dm(0, { DM_NAME: 'vg-pool_tdata', DM_UDEV_DISABLE_DISK_RULES_FLAG: '1' }),
      dm(1, { DM_NAME: 'vg-pool_tmeta', DM_UDEV_DISABLE_DISK_RULES_FLAG: '1', QUBES_EXPORT_BLOCK_DEVICE: '1' }),
      dm(2, { DM_NAME: 'vg-private', QUBES_EXPORT_BLOCK_DEVICE: '0' }),
      dm(3, {}, { 'dm/name': '' }),
      dm(4, {}, { 'dm/name': 'snapshot-1' }),
      dm(5, {}, { 'dm/name': 'vg-data' }),
    ];
    expect(hidden(records)).toEqual({
      'dm-0': 'internal device-mapper device',
      'dm-1': 'offered',
      'dm-2': 'excluded by a udev rule',
      'dm-3': 'internal device-mapper device',
      'dm-4': 'internal device-mapper device',
      'dm-5': 'offered',
    });
  });
});
