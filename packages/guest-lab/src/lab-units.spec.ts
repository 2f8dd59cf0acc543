import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PROBE_MARKER, chooseAccelerator, detectAccelerator, kvmRunsGuest } from './accelerator';
import { compareVersions, findGuestKernel } from './guest-image';
import { guestQemuArgs } from './guest';
import { bootDeviceArgs, nextDeviceId, parseDeviceSpec } from './lab-devices';
import { newcArchive } from './newc';

// The parts of the lab that need no guest: archive format, kernel choice, accelerator choice,
// device specs and QEMU's command line.
let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-lab-unit-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const image = () => ({ kernelVersion: '6.1.0-9-amd64', kernel: '/k/vmlinux', initrd: '/k/initrd', modulesDir: '/m' });

describe('newc archives', () => {
  it('are read back by busybox cpio with their names, modes and contents', () => {
    const archive = newcArchive([
      { type: 'dir', path: 'bin' },
      { type: 'file', path: 'bin/hello', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
      { type: 'file', path: 'odd-length', data: Buffer.from('abc') },
      { type: 'char', path: 'console', major: 5, minor: 1 },
    ]);
    expect(archive.length % 4).toBe(0);
    const file = path.join(dir, 'a.cpio');
    fs.writeFileSync(file, archive);
    const listing = execFileSync('busybox', ['cpio', '-tv', '-F', file], { encoding: 'utf8', stdio: 'pipe' });
    expect(listing).toMatch(/^drwxr-xr-x .* bin$/m);
    expect(listing).toMatch(/^-rwxr-xr-x .* bin\/hello$/m);
    expect(listing).toMatch(/^crw------- .* console$/m);
    execFileSync('busybox', ['cpio', '-id', '-F', file, 'bin/hello', 'odd-length'], { cwd: dir, stdio: 'ignore' });
    expect(fs.readFileSync(path.join(dir, 'bin/hello'), 'utf8')).toBe('#!/bin/sh\necho hi\n');
    expect(fs.readFileSync(path.join(dir, 'odd-length'), 'utf8')).toBe('abc');
  });
});

describe('the guest kernel', () => {
  it('is the newest vmlinuz whose modules are installed, or the one asked for', () => {
    const boot = path.join(dir, 'boot');
    const modules = path.join(dir, 'lib', 'modules');
    for (const v of ['6.1.0-9-amd64', '6.1.0-57-amd64', '6.1.0-60-amd64']) {
      fs.mkdirSync(boot, { recursive: true });
      fs.writeFileSync(path.join(boot, `vmlinuz-${v}`), '');
      if (v !== '6.1.0-60-amd64') {
        fs.mkdirSync(path.join(modules, v), { recursive: true });
        fs.writeFileSync(path.join(modules, v, 'modules.dep'), '');
      }
    }
    expect(findGuestKernel({ bootDir: boot, modulesRoot: modules }).version).toBe('6.1.0-57-amd64');
    expect(findGuestKernel({ bootDir: boot, modulesRoot: modules, kernelVersion: '6.1.0-9-amd64' }).version).toBe(
      '6.1.0-9-amd64',
    );
    expect(() => findGuestKernel({ bootDir: boot, modulesRoot: modules, kernelVersion: '6.1.0-60-amd64' })).toThrow(
      expect.objectContaining({ code: 'DG_GUEST_NO_KERNEL', hint: expect.stringContaining('linux-image-amd64') }),
    );
    expect(['6.1.0-57-amd64', '6.1.0-9-amd64', '6.10.0-1-amd64'].sort(compareVersions)).toEqual([
      '6.1.0-9-amd64',
      '6.1.0-57-amd64',
      '6.10.0-1-amd64',
    ]);
  });
});

describe('the accelerator', () => {
  it('is TCG without a usable /dev/kvm, and whatever is forced', async () => {
    expect(await detectAccelerator(image(), { kvmDevice: path.join(dir, 'no-kvm'), cacheDir: dir })).toBe('tcg');
    expect(await chooseAccelerator(image(), 'kvm')).toBe('kvm');
    expect(await chooseAccelerator(image(), 'tcg')).toBe('tcg');
  });

  it('is KVM only when a guest actually ran on it: a QEMU that starts but runs nothing does not count', async () => {
    const fake = (name: string, script: string) => {
      const file = path.join(dir, name);
      fs.writeFileSync(file, `#!/bin/sh\n${script}\n`, { mode: 0o755 });
      return file;
    };
    expect(await kvmRunsGuest(image(), fake('boots', `echo '${PROBE_MARKER}'; sleep 30`), 5_000)).toBe(true);
    // PVM's failure mode: the process starts (as `-enable-kvm -S` does), the guest never runs.
    expect(await kvmRunsGuest(image(), fake('hangs', 'sleep 30'), 300)).toBe(false);
    expect(
      await kvmRunsGuest(image(), fake('fails', 'echo "kvm_buf_set_msrs: Assertion failed" >&2; exit 1'), 5_000),
    ).toBe(false);
    expect(await kvmRunsGuest(image(), path.join(dir, 'missing'), 5_000)).toBe(false);
  });
});

describe('devices', () => {
  it('parses the CLI forms and numbers ids per kind', () => {
    expect(parseDeviceSpec('usb-kbd')).toEqual({ kind: 'usb-kbd' });
    expect(parseDeviceSpec('usb-storage=/x/stick.img:ro')).toEqual({
      kind: 'usb-storage',
      image: '/x/stick.img',
      readOnly: true,
    });
    expect(() => parseDeviceSpec('usb-camera')).toThrow(expect.objectContaining({ code: 'DG_GUEST_BAD_DEVICE' }));
    expect(() => parseDeviceSpec('usb-kbd=/x')).toThrow(expect.objectContaining({ code: 'DG_GUEST_BAD_DEVICE' }));
    expect(nextDeviceId('usb-kbd', ['kbd1', 'kbd3', 'stick2'])).toBe('kbd2');
    expect(nextDeviceId('usb-storage', ['kbd1'])).toBe('stick1');
  });

  it('gives QEMU a stick, a keyboard and a serial adapter on the xHCI controller', () => {
    const { args, devices } = bootDeviceArgs(
      [{ kind: 'usb-storage' }, { kind: 'usb-kbd' }, { kind: 'usb-serial' }],
      dir,
    );
    expect(devices).toEqual([
      { id: 'stick1', kind: 'usb-storage' },
      { id: 'kbd1', kind: 'usb-kbd' },
      { id: 'serial1', kind: 'usb-serial' },
    ]);
    // A blank 64 MiB image for a stick without one, in the guest's directory (removed with it).
    expect(fs.statSync(path.join(dir, 'stick1.img')).size).toBe(64 * 1024 * 1024);
    expect(args).toEqual([
      '-blockdev',
      JSON.stringify({
        driver: 'raw',
        'node-name': 'stick1-drive',
        file: { driver: 'file', filename: path.join(dir, 'stick1.img'), 'read-only': false },
        'read-only': false,
      }),
      '-device',
      JSON.stringify({ driver: 'usb-storage', id: 'stick1', bus: 'xhci.0', drive: 'stick1-drive', removable: true }),
      '-device',
      JSON.stringify({ driver: 'usb-kbd', id: 'kbd1', bus: 'xhci.0' }),
      '-chardev',
      'ringbuf,id=serial1-chr,size=65536',
      '-device',
      JSON.stringify({ driver: 'usb-serial', id: 'serial1', bus: 'xhci.0', chardev: 'serial1-chr' }),
    ]);
  });
});

describe("QEMU's command line", () => {
  it('has what the QEMU connector needs, two QMP monitors, the 9p root and the agent console', () => {
    const args = guestQemuArgs({
      name: 'work',
      dir: '/run/lab/work.guest',
      image: image(),
      accel: 'tcg',
      qmpSocket: '/run/lab/work.qmp',
      pidfile: '/run/lab/work.pid',
      options: { iommu: true },
      deviceArgs: [],
    });
    const joined = args.join(' ');
    expect(joined).toContain('-device qemu-xhci,id=xhci,p2=8,p3=8');
    expect(joined).toContain('-device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1');
    expect(joined).toContain('-device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2');
    expect(joined).toContain('-qmp unix:/run/lab/work.guest/lab.qmp,server=on,wait=off');
    expect(joined).toContain('-qmp unix:/run/lab/work.qmp,server=on,wait=off');
    expect(joined).toContain('-accel tcg,tb-size=64');
    expect(joined).toContain('readonly=on');
    expect(joined).toContain('-device virtconsole,chardev=agent,name=devgate.agent');
    // The IOMMU comes before the PCI devices it translates for.
    expect(args.indexOf('intel-iommu')).toBeLessThan(args.indexOf('qemu-xhci,id=xhci,p2=8,p3=8'));
    const kernelArgs = args[args.indexOf('-append') + 1].split(' ');
    expect(kernelArgs).toEqual(
      expect.arrayContaining(['intel_iommu=on', 'devgate.name=work', 'usb_storage.delay_use=0']),
    );
  });
});
