import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DevgateError, sysname } from '@devgate/core';
import { detectTextFormat, loadRecording, type Recording } from './recording.js';
import { RECORDED_DIR, recorded } from './testing/recordings';

// host cannot depend on @devgate/testkit (testkit depends on host), so the path is spelled out:
// shared/ sits beside the repository.
const recordedDir = RECORDED_DIR;

describe('loadRecording', () => {
  const open: Recording[] = [];
  let work: string;
  beforeEach(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-recording-spec-'));
  });
  afterEach(() => {
    open.splice(0).forEach((r) => r.dispose());
    fs.rmSync(work, { recursive: true, force: true });
  });
  const load = (file: string) => {
    const recording = loadRecording(file);
    open.push(recording);
    return recording;
  };

  it.each([
    ['usbkbd.umockdev', 'umockdev', 9],
    ['usbkbd.pcap.umockdev', 'umockdev', 3],
    ['synaptics-touchpad.umockdev', 'umockdev', 4],
    ['canon-powershot-sx200.umockdev', 'umockdev', 6],
    ['sony-xperia-mini-pro.umockdev', 'umockdev', 6],
    ['fido2.umockdev', 'umockdev', 8],
    ['KIOXIA_TransMemory.txt', 'udev-export-db', 3],
    ['HP_DVDRW_WITH_ISO9660_DISC.txt', 'udev-export-db', 2],
    ['HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt', 'udev-export-db', 1095],
    ['TOSHIBA_NVME.txt', 'udev-export-db', 804],
    ['SHUTTLE_DH170_WITH_USB_DISK.txt', 'udev-export-db', 862],
    ['LENOVO_T420.txt', 'udev-export-db', 578],
    ['REALTEK_CARD_READER_AND_NVME.txt', 'udev-export-db', 852],
    ['simple-nvme.tar.xz', 'sysfs-tarball', 23],
  ])('%s is %s with %i devices', (name, format, size) => {
    const recording = load(recorded(name));
    expect(recording.format).toBe(format);
    expect(recording.tree.size).toBe(size);
  });

  it('covers every recording kept in shared/fixtures/recorded', () => {
    const kept = fs.readdirSync(recordedDir).filter((name) => !/\.(md|json)$/.test(name));
    expect(kept.sort()).toEqual(
      [
        'usbkbd.umockdev',
        'usbkbd.pcap.umockdev',
        'synaptics-touchpad.umockdev',
        'canon-powershot-sx200.umockdev',
        'sony-xperia-mini-pro.umockdev',
        'fido2.umockdev',
        'KIOXIA_TransMemory.txt',
        'HP_DVDRW_WITH_ISO9660_DISC.txt',
        'HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt',
        'TOSHIBA_NVME.txt',
        'SHUTTLE_DH170_WITH_USB_DISK.txt',
        'LENOVO_T420.txt',
        'REALTEK_CARD_READER_AND_NVME.txt',
        'simple-nvme.tar.xz',
      ].sort(),
    );
  });

  it('detects the format by content when the name says nothing', () => {
    const umockdev = path.join(work, 'device');
    fs.copyFileSync(recorded('fido2.umockdev'), umockdev);
    expect(load(umockdev).format).toBe('umockdev');
    const exportDb = path.join(work, 'dump');
    fs.copyFileSync(recorded('KIOXIA_TransMemory.txt'), exportDb);
    expect(load(exportDb).format).toBe('udev-export-db');
    const tarball = path.join(work, 'dump.bin');
    fs.copyFileSync(recorded('simple-nvme.tar.xz'), tarball);
    const recording = load(tarball);
    expect(recording.format).toBe('sysfs-tarball');
    expect(recording.tree.devices('block').some((r) => sysname(r.devpath) === 'nvme0n1p3')).toBe(true);
  });

  it('detectTextFormat: umockdev-only lines decide', () => {
    expect(detectTextFormat('P: /devices/x\nE: SUBSYSTEM=usb\nA: idVendor=1234\n')).toBe('umockdev');
    expect(detectTextFormat('P: /devices/x\nL: driver=../../bus\nE: SUBSYSTEM=usb\n')).toBe('umockdev');
    expect(detectTextFormat('P: /devices/x\nL: 0\nE: SUBSYSTEM=usb\n')).toBe('udev-export-db');
    expect(detectTextFormat('P: /devices/x\nE: SUBSYSTEM=usb\n', 'x.umockdev')).toBe('umockdev');
  });

  it('the tarball temp dir goes away on dispose', () => {
    const recording = loadRecording(recorded('simple-nvme.tar.xz'));
    const sda = recording.tree.devices('block').find((r) => sysname(r.devpath) === 'sda')!;
    expect(sda.attribute('size')).toBe('468862128');
    recording.dispose();
    // Attributes are read lazily: after dispose the files are gone.
    expect(sda.attribute('ro')).toBeUndefined();
  });

  it.each([
    ['empty', ''],
    ['blank lines', '\n\n\n'],
    ['garbage', 'GIF89a\u0001\u0002 nonsense\n'],
    ['binary', '\0\0\0\0'],
  ])('rejects %s input with the coded error', (_label, content) => {
    const file = path.join(work, 'input.txt');
    fs.writeFileSync(file, content);
    expect(() => loadRecording(file)).toThrow(DevgateError);
    try {
      loadRecording(file);
    } catch (error) {
      expect((error as DevgateError).code).toBe('DG_RECORDING_UNREADABLE');
    }
  });

  it('rejects a directory and a missing file with the coded error', () => {
    expect(() => loadRecording(work)).toThrow(/not a regular file/);
    expect(() => loadRecording(path.join(work, 'missing.umockdev'))).toThrow(/DG_RECORDING|cannot read recording/);
  });
});
