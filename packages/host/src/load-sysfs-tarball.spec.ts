import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type RawDeviceRecord, sysname } from '@devgate/core';
import { type SysfsTarball, loadSysfsTarball } from './load-sysfs-tarball.js';
import { expectRecordingError, recorded } from './testing/recordings';

function ourTempDirs(): string[] {
  return fs.readdirSync(os.tmpdir()).filter((name) => name.startsWith('devgate-sysfs-'));
}

describe('loadSysfsTarball: simple-nvme.tar.xz', () => {
  let loaded: SysfsTarball;
  let byName: (name: string) => RawDeviceRecord;

  beforeAll(() => {
    loaded = loadSysfsTarball(recorded('simple-nvme.tar.xz'));
    byName = (name) => {
      const found = loaded.tree.devices().find((r) => sysname(r.devpath) === name);
      if (!found) throw new Error(`no device ${name}`);
      return found;
    };
  });
  afterAll(() => loaded?.dispose());

  it('finds the disks and their partitions', () => {
    const names = loaded.tree.devices('block').map((r) => sysname(r.devpath));
    expect(names.sort()).toEqual([
      'nvme0n1',
      'nvme0n1p1',
      'nvme0n1p2',
      'nvme0n1p3',
      'sda',
      'sda1',
      'sda2',
      'sda3',
      'sda4',
      'sda5',
      'sda6',
      'sdb',
      'sdb1',
    ]);
  });

  it('reads sizes (512-byte sectors) and the other attributes lazily from the extracted files', () => {
    expect(byName('sda').attribute('size')).toBe('468862128');
    expect(byName('sda1').attribute('size')).toBe('409600');
    expect(byName('sda6').attribute('size')).toBe('16384000');
    expect(byName('sdb1').attribute('size')).toBe('156299440');
    expect(byName('nvme0n1').attribute('size')).toBe('468862128');
    expect(byName('nvme0n1p2').attribute('size')).toBe('419430400');
    expect(byName('sda1').attribute('start')).toBe('2048');
    expect(byName('sda').attribute('removable')).toBe('0');
    expect(byName('sda').attribute('queue/rotational')).toBe('0');
    expect(byName('sda').attribute('device/model')).toBe('KINGSTON SH103S3');
    expect(byName('sda').entries?.('queue')).toContain('rotational');
  });

  it('gives block devices kernel-style uevent properties derived from the dump', () => {
    expect(byName('sda').properties).toMatchObject({
      SUBSYSTEM: 'block',
      DEVTYPE: 'disk',
      DEVNAME: '/dev/sda',
      MAJOR: '8',
      MINOR: '0',
    });
    expect(byName('sdb1').properties).toMatchObject({ DEVTYPE: 'partition', PARTN: '1', MAJOR: '8', MINOR: '17' });
    expect(byName('nvme0n1p3').properties).toMatchObject({
      DEVTYPE: 'partition',
      PARTN: '3',
      MAJOR: '259',
      MINOR: '3',
    });
  });

  it('makes the PCI, SCSI and NVMe ancestors devices, so drivers can walk up', () => {
    const tree = loaded.tree;
    const scsi = tree.parent(byName('sda'))!;
    expect(sysname(scsi.devpath)).toBe('0:0:0:0');
    expect(scsi.subsystem).toBe('scsi');
    expect(scsi.properties.DEVTYPE).toBe('scsi_device');
    expect(scsi.attribute('model')).toBe('KINGSTON SH103S3');
    expect(tree.parent(byName('sdb'))!.attribute('model')).toBe('WDC WD800JD-00MS');
    const ctrl = tree.parent(byName('nvme0n1'))!;
    expect(sysname(ctrl.devpath)).toBe('nvme0');
    expect(ctrl.subsystem).toBe('nvme');
    expect(ctrl.attribute('model')?.trim()).toBe('KINGSTON SKC1000240G');
    const pci = [...tree.ancestors(byName('nvme0n1p1'))].filter((r) => r.subsystem === 'pci');
    expect(pci.map((r) => sysname(r.devpath))).toEqual(['0000:01:00.0', '0000:00:01.0']);
    expect(pci[0].properties.PCI_SLOT_NAME).toBe('0000:01:00.0');
    // ata1 and pci0000:00 are plain directories in sysfs terms here: not devices.
    expect(tree.devices().some((r) => sysname(r.devpath) === 'ata1')).toBe(false);
  });

  it('reads mounts from the dumped /proc', () => {
    expect([...loaded.tree.usage.mounted].sort()).toEqual(['259:2', '259:3', '8:1', '8:17', '8:2', '8:4']);
    expect(loaded.tree.usage.swaps.size).toBe(0);
  });

  it('extracts into a temp dir holding sys/ and proc/', () => {
    expect(loaded.root.startsWith(fs.realpathSync(os.tmpdir()))).toBe(true);
    expect(path.basename(loaded.root)).toBe('simple-nvme');
    expect(fs.lstatSync(path.join(loaded.root, 'sys/block/sda')).isSymbolicLink()).toBe(true);
    expect(fs.existsSync(path.join(loaded.root, 'proc/self/mountinfo'))).toBe(true);
  });
});

describe('loadSysfsTarball: cleanup and bad input', () => {
  let work: string;
  beforeEach(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-tarball-spec-'));
  });
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  function makeTarball(name: string, build: (dir: string) => void): string {
    const src = path.join(work, 'src');
    fs.mkdirSync(src, { recursive: true });
    build(src);
    const out = path.join(work, name);
    execFileSync('tar', ['-cJf', out, '-C', src, '.']);
    return out;
  }

  it('dispose removes the temp dir, and a second dispose does nothing', () => {
    const loaded = loadSysfsTarball(recorded('simple-nvme.tar.xz'));
    const tmp = path.dirname(loaded.root);
    expect(fs.existsSync(tmp)).toBe(true);
    loaded.dispose();
    expect(fs.existsSync(tmp)).toBe(false);
    loaded.dispose();
  });

  it('removes directories the archive made read-only', () => {
    const file = makeTarball('ro.tar.xz', (dir) => {
      fs.mkdirSync(path.join(dir, 'top/sys/devices/locked'), { recursive: true });
      fs.chmodSync(path.join(dir, 'top/sys/devices/locked'), 0o555);
    });
    const loaded = loadSysfsTarball(file);
    const tmp = path.dirname(loaded.root);
    loaded.dispose();
    expect(fs.existsSync(tmp)).toBe(false);
  });

  it('rejects a file that is not xz, and leaves no temp dir behind', () => {
    const before = ourTempDirs();
    const file = path.join(work, 'garbage.tar.xz');
    fs.writeFileSync(file, 'not compressed at all\n');
    expectRecordingError(() => loadSysfsTarball(file), /not an xz file/);
    expect(ourTempDirs()).toEqual(before);
  });

  it('rejects xz data that is not a tar archive', () => {
    const file = path.join(work, 'text.tar.xz');
    fs.writeFileSync(path.join(work, 'text'), 'hello\n'.repeat(1000));
    execFileSync('xz', ['-k', path.join(work, 'text')]);
    fs.renameSync(path.join(work, 'text.xz'), file);
    expectRecordingError(() => loadSysfsTarball(file), /not a tar archive/);
  });

  it('rejects a truncated tarball', () => {
    const full = fs.readFileSync(recorded('simple-nvme.tar.xz'));
    const file = path.join(work, 'cut.tar.xz');
    fs.writeFileSync(file, full.subarray(0, full.length / 2));
    expectRecordingError(() => loadSysfsTarball(file), /not an xz file/);
  });

  it('rejects a tarball without sys/devices', () => {
    const file = makeTarball('empty.tar.xz', (dir) => fs.mkdirSync(path.join(dir, 'top/proc'), { recursive: true }));
    expectRecordingError(() => loadSysfsTarball(file), /no top directory holding sys\/devices/);
  });

  it('reports a missing file with the coded error', () => {
    expectRecordingError(() => loadSysfsTarball(path.join(work, 'missing.tar.xz')), /ENOENT/);
  });

  it('writes nothing, not even through links the archive plants', () => {
    const outside = path.join(work, 'outside');
    fs.mkdirSync(outside);
    const file = makeTarball('evil.tar.xz', (dir) => {
      const disk = path.join(dir, 'top/sys/devices/pci0000:00/0000:00:1f.2/block/sda');
      fs.mkdirSync(disk, { recursive: true });
      fs.writeFileSync(path.join(disk, 'dev'), '8:0\n');
      fs.mkdirSync(path.join(dir, 'top/sys/block'));
      fs.symlinkSync('../devices/pci0000:00/0000:00:1f.2/block/sda', path.join(dir, 'top/sys/block/sda'));
      // sys/class leads out of the dump; a uevent link points at a file outside too.
      fs.symlinkSync(outside, path.join(dir, 'top/sys/class'));
      fs.symlinkSync(path.join(outside, 'uevent-target'), path.join(disk, 'uevent'));
    });
    const loaded = loadSysfsTarball(file);
    try {
      expect(loaded.tree.devices('block').map((r) => sysname(r.devpath))).toEqual(['sda']);
      expect(loaded.tree.devices('block')[0].properties).toMatchObject({ MAJOR: '8', MINOR: '0', DEVTYPE: 'disk' });
    } finally {
      loaded.dispose();
    }
    expect(fs.readdirSync(outside)).toEqual([]);
  });
});
