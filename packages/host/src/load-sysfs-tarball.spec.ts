import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type RawDeviceRecord, sysname } from '@devgate/core';
import {
  SYSFS_TARBALL_LIMITS,
  type SysfsTarball,
  type SysfsTarballLimits,
  loadSysfsTarball,
} from './load-sysfs-tarball.js';
import { expectRecordingError, recorded } from './testing/recordings';

// Children load hostile tarballs (a loader that blocks or aborts must fail a test, not hang jest).
jest.setTimeout(30_000);

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
  /** The TMPDIR of loads in a child, so a leftover is seen whatever other specs load meanwhile. */
  let tmp: string;
  beforeEach(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-tarball-spec-'));
    tmp = path.join(work, 'tmp');
    fs.mkdirSync(tmp);
  });
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  const REGISTER_TS = path.resolve(__dirname, '../../service/src/store/testing/register-ts.cjs');

  /**
   * Loads `file` in a child node with its own TMPDIR (jest gives a spec a copy of the environment,
   * which os.tmpdir() does not read): a leftover temp dir is seen, and a loader that blocks or aborts
   * fails the test instead of jest.
   */
  function loadInChild(
    file: string,
    limits?: SysfsTarballLimits,
  ): Promise<{ signal: NodeJS.Signals | null; result: unknown; stderr: string }> {
    const script = `
      const { loadSysfsTarball } = require(${JSON.stringify(path.join(__dirname, 'load-sysfs-tarball.ts'))});
      let result;
      try {
        loadSysfsTarball(process.argv[1], process.argv[2] && JSON.parse(process.argv[2])).dispose();
        result = { loaded: true };
      } catch (error) {
        result = { code: error.code, message: error.message };
      }
      process.stdout.write(JSON.stringify(result));`;
    const args = ['--conditions=@devgate/source', '-r', REGISTER_TS, '-e', script, file];
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, limits ? [...args, JSON.stringify(limits)] : args, {
        env: { ...process.env, TMPDIR: tmp },
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 20_000,
      });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
      child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr = (stderr + text).slice(-2000)));
      child.once('error', reject);
      child.once('close', (_code, signal) =>
        resolve({ signal, result: stdout ? JSON.parse(stdout) : undefined, stderr }),
      );
    });
  }

  /** Expects the child's load to end with DG_RECORDING_UNREADABLE saying `reason`, and no temp dir left. */
  async function expectRefused(file: string, reason: string, limits?: SysfsTarballLimits): Promise<void> {
    const { signal, result, stderr } = await loadInChild(file, limits);
    expect({ signal, stderr: signal ? stderr : '' }).toEqual({ signal: null, stderr: '' });
    expect(result).toEqual({ code: 'DG_RECORDING_UNREADABLE', message: expect.stringContaining(reason) });
    expect(fs.readdirSync(tmp)).toEqual([]);
  }

  function makeTarball(name: string, build: (dir: string) => void, tarOptions: string[] = []): string {
    const src = path.join(work, 'src');
    fs.mkdirSync(src, { recursive: true });
    build(src);
    const out = path.join(work, name);
    execFileSync('tar', ['-cJf', out, ...tarOptions, '-C', src, '.']);
    fs.rmSync(src, { recursive: true, force: true });
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

  it('rejects a file that is not xz, and leaves no temp dir behind', async () => {
    const file = path.join(work, 'garbage.tar.xz');
    fs.writeFileSync(file, 'not compressed at all\n');
    expectRecordingError(() => loadSysfsTarball(file), /not an xz file/);
    await expectRefused(file, 'not an xz file');
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

  it('rejects a tarball without sys/devices, once unpacked, and leaves no temp dir behind', async () => {
    const file = makeTarball('empty.tar.xz', (dir) => fs.mkdirSync(path.join(dir, 'top/proc'), { recursive: true }));
    expectRecordingError(() => loadSysfsTarball(file), /no top directory holding sys\/devices/);
    await expectRefused(file, 'no top directory holding sys/devices');
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

  // A disk as a dump lays it out, and a SCSI device above it, to hang hostile entries on.
  const SCSI = 'top/sys/devices/pci0000:00/0000:00:1f.2/host0/target0:0:0/0:0:0:0';
  function dump(dir: string): { scsi: string; disk: string } {
    const scsi = path.join(dir, SCSI);
    const disk = path.join(scsi, 'block/sda');
    fs.mkdirSync(disk, { recursive: true });
    fs.writeFileSync(path.join(disk, 'dev'), '8:0\n');
    fs.writeFileSync(path.join(disk, 'size'), '2048\n');
    fs.mkdirSync(path.join(dir, 'top/sys/block'));
    fs.symlinkSync(
      `../devices/${SCSI.slice('top/sys/devices/'.length)}/block/sda`,
      path.join(dir, 'top/sys/block/sda'),
    );
    return { scsi, disk };
  }

  // What a reviewer showed: a FIFO as an attribute blocked the loader forever (its temp dir left
  // behind), /dev/zero as a uevent file aborted the process (std::bad_alloc); dev/ nodes were kept.
  it.each([
    ['a FIFO', `${SCSI}/block/sda/dev`, ['mkfifo']],
    ['a character device', `${SCSI}/block/sda/uevent`, ['mknod', 'c', '1', '5']],
    ['a block device', 'top/dev/sda', ['mknod', 'b', '8', '0']],
  ])('refuses a tarball holding %s at once, and leaves no temp dir', async (kind, where, [command, ...args]) => {
    const file = makeTarball('special.tar.xz', (dir) => {
      dump(dir);
      const node = path.join(dir, where);
      fs.mkdirSync(path.dirname(node), { recursive: true });
      fs.rmSync(node, { force: true });
      execFileSync(command, [node, ...args]);
    });
    await expectRefused(file, `holds ${kind} (./${where}): a copy of sysfs holds only`);
  });

  it('removes links that lead out of the dump, so no file outside is read as an attribute', () => {
    const outside = path.join(work, 'outside');
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'secret'), 'SECRET\n');
    const file = makeTarball('links.tar.xz', (dir) => {
      const { scsi, disk } = dump(dir);
      fs.symlinkSync('/etc/hostname', path.join(scsi, 'model'));
      fs.symlinkSync(path.join(outside, 'secret'), path.join(scsi, 'vendor'));
      // Through another link of the dump that leads out.
      fs.symlinkSync('vendor', path.join(scsi, 'serial'));
      // Nothing there yet: a file made there later must not become an attribute either.
      fs.symlinkSync(path.join(outside, 'later'), path.join(scsi, 'wwid'));
      // Read as text, `rev` stays inside (`0:0:0:0/<name>/outside/later`); resolved, `up` is the
      // extraction root (kept), so `up/..` is the temp dirs' parent, which holds this test's dir.
      fs.symlinkSync('../'.repeat(8).slice(0, -1), path.join(scsi, 'up'));
      fs.symlinkSync(`up/../${path.basename(work)}/outside/later`, path.join(scsi, 'rev'));
      // Links that stay inside are kept.
      fs.symlinkSync('../../../0:0:0:0', path.join(disk, 'device'));
    });
    const loaded = loadSysfsTarball(file);
    try {
      const extracted = path.dirname(loaded.root);
      const scsiDir = path.join(extracted, SCSI);
      // The loader's temp dir is beside this test's: `rev` leads to the same `later`.
      expect(path.dirname(extracted)).toBe(path.dirname(fs.realpathSync(work)));
      fs.writeFileSync(path.join(outside, 'later'), 'LATER\n');
      const disk = loaded.tree.devices('block')[0];
      expect(sysname(disk.devpath)).toBe('sda');
      const scsi = loaded.tree.parent(disk)!;
      expect(sysname(scsi.devpath)).toBe('0:0:0:0');
      const read = ['model', 'vendor', 'serial', 'wwid', 'rev'].map((name) => [name, scsi.attribute(name)]);
      expect(read).toEqual(['model', 'vendor', 'serial', 'wwid', 'rev'].map((name) => [name, undefined]));
      expect(['model', 'vendor', 'serial', 'wwid', 'rev'].filter((name) => isLink(path.join(scsiDir, name)))).toEqual(
        [],
      );
      expect(isLink(path.join(scsiDir, 'up'))).toBe(true);
      expect(isLink(path.join(scsiDir, 'block/sda/device'))).toBe(true);
      expect(disk.attribute('size')).toBe('2048');
    } finally {
      loaded.dispose();
    }
  });

  it('refuses a tarball of more entries than allowed, leaving no temp dir', async () => {
    const file = makeTarball('many.tar.xz', (dir) => {
      dump(dir);
      for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(dir, `top/f${i}`), '');
    });
    await expectRefused(file, 'more than 20 entries', { ...SYSFS_TARBALL_LIMITS, maxEntries: 20 });
    // The same dump within the bound loads.
    loadSysfsTarball(file, { ...SYSFS_TARBALL_LIMITS, maxEntries: 60 }).dispose();
  });

  it('refuses a file larger than allowed, though sparse and small in the archive', async () => {
    const size = SYSFS_TARBALL_LIMITS.maxFileBytes + 1;
    const file = makeTarball(
      'sparse.tar.xz',
      (dir) => {
        dump(dir);
        fs.mkdirSync(path.join(dir, 'top/proc/self'), { recursive: true });
        fs.closeSync(fs.openSync(path.join(dir, 'top/proc/self/mountinfo'), 'w'));
        fs.truncateSync(path.join(dir, 'top/proc/self/mountinfo'), size);
      },
      ['--sparse'],
    );
    expect(fs.statSync(file).size).toBeLessThan(64 * 1024);
    await expectRefused(file, `top/proc/self/mountinfo is larger than ${size - 1} bytes`);
  });

  it('refuses files that unpack to more than allowed together', async () => {
    const file = makeTarball(
      'sum.tar.xz',
      (dir) => {
        dump(dir);
        for (const name of ['a', 'b', 'c']) {
          fs.closeSync(fs.openSync(path.join(dir, 'top', name), 'w'));
          fs.truncateSync(path.join(dir, 'top', name), 1024 * 1024);
        }
      },
      ['--sparse'],
    );
    const limits = { ...SYSFS_TARBALL_LIMITS, maxUnpackedBytes: 2 * 1024 * 1024 };
    await expectRefused(file, 'unpacks to more than 2097152 bytes', limits);
  });
});

function isLink(file: string): boolean {
  try {
    return fs.lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}
