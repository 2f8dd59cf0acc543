import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DevgateError, HostTree, recordOf } from '@devgate/core';
import { type Recording, loadRecording } from '@devgate/host';
import { recordedFixture } from '@devgate/testkit';
import { MANIFEST_FILE, applyHide, planDiff, planHide, undoHide } from './boot-hiding';
import { readPciHost } from './pci-devices';
import { NO_PCI_NAMES } from './pci-ids';
import { usbControllerReport } from './usb-controllers';

const loaded: Recording[] = [];
function tree(name: string, mounted: string[] = []): HostTree {
  const recording = loadRecording(recordedFixture(name));
  loaded.push(recording);
  return new HostTree(recording.tree.devices(), { mounted: new Set(mounted), swaps: new Set() });
}
afterAll(() => loaded.forEach((r) => r.dispose()));

const DEBIAN_MODULES =
  '# List of modules that you want to include in your initramfs.\n# They will be loaded at boot time in the order below.\n' +
  '#\n# Syntax:  module_name [args ...]\n#\n# You must run update-initramfs(8) to effect this change.\n#\n# Examples:\n#\n# raid1\n# sd_mod\n';

/** A root laid out like a Debian or Fedora system's /etc, with files the plan must leave alone. */
function makeRoot(family: 'debian' | 'fedora'): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-hide-'));
  fs.mkdirSync(path.join(root, 'etc/modprobe.d'), { recursive: true });
  fs.writeFileSync(path.join(root, 'etc/modprobe.d/blacklist.conf'), 'blacklist pcspkr\n');
  if (family === 'debian') {
    fs.writeFileSync(path.join(root, 'etc/os-release'), 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n');
    fs.mkdirSync(path.join(root, 'etc/initramfs-tools'));
    // No newline at the end, and a mode of its own: both must come back exactly.
    fs.writeFileSync(path.join(root, 'etc/initramfs-tools/modules'), DEBIAN_MODULES + 'dm_crypt', { mode: 0o640 });
    fs.chmodSync(path.join(root, 'etc/initramfs-tools/modules'), 0o640);
  } else {
    fs.writeFileSync(path.join(root, 'etc/os-release'), 'NAME="Fedora Linux"\nID=fedora\n');
  }
  return root;
}

/** Every path under the root with its type, mode and bytes: what "byte-identical" is checked on. */
function snapshot(root: string): Record<string, string> {
  const result: Record<string, string> = {};
  const walk = (dir: string) => {
    for (const name of fs.readdirSync(dir).sort()) {
      const file = path.join(dir, name);
      const stat = fs.lstatSync(file);
      const key = path.relative(root, file);
      if (stat.isDirectory()) {
        result[key] = `dir ${(stat.mode & 0o7777).toString(8)}`;
        walk(file);
      } else result[key] = `file ${(stat.mode & 0o7777).toString(8)} ${fs.readFileSync(file).toString('base64')}`;
    }
  };
  walk(root);
  return result;
}

function request(base: HostTree, root: string, controllers?: string[]) {
  return { root, host: readPciHost(base, NO_PCI_NAMES), report: usbControllerReport(base, NO_PCI_NAMES), controllers };
}

function refusal(work: () => unknown): string {
  try {
    work();
  } catch (error) {
    return error instanceof DevgateError ? `${error.code}: ${error.message}` : `not coded: ${String(error)}`;
  }
  return 'not refused';
}

const roots: string[] = [];
afterEach(() => roots.splice(0).forEach((r) => fs.rmSync(r, { recursive: true, force: true })));
function root(family: 'debian' | 'fedora'): string {
  const r = makeRoot(family);
  roots.push(r);
  return r;
}

describe('devgate usb-controllers hide', () => {
  it('T420 on Debian: plans ids and load order, applies, and --undo leaves the root byte-identical', () => {
    const dir = root('debian');
    const before = snapshot(dir);
    const plan = planHide(request(tree('LENOVO_T420.txt'), dir)); // default: the safe controllers
    expect(plan).toMatchObject({ family: 'debian', method: 'ids', commands: ['update-initramfs -u -k all'] });
    expect(plan.controllers.map((c) => c.port)).toEqual(['dom0:00_1a.0', 'dom0:00_1d.0']);
    const diff = planDiff(plan);
    expect(diff).toContain('--- /dev/null\n+++ b/etc/modprobe.d/devgate-usb-controllers.conf\n');
    expect(diff).toContain('+options vfio-pci ids=8086:1c2d,8086:1c26\n+softdep ehci_pci pre: vfio-pci\n');
    expect(diff).toContain(
      '--- a/etc/initramfs-tools/modules\n+++ b/etc/initramfs-tools/modules\n@@ -9,4 +9,8 @@\n #\n # raid1\n # sd_mod\n' +
        '-dm_crypt\n\\ No newline at end of file\n+dm_crypt\n+# devgate usb-controllers hide: vfio-pci in the initramfs, before the USB host drivers\n' +
        '+vfio\n+vfio_iommu_type1\n+vfio_pci\n',
    );
    // Planning writes nothing.
    expect(snapshot(dir)).toEqual(before);

    applyHide(plan);
    expect(fs.readFileSync(path.join(dir, 'etc/modprobe.d/devgate-usb-controllers.conf'), 'utf8')).toMatch(
      /^# Written by devgate usb-controllers hide.*\n(#.*\n)+options vfio-pci ids=8086:1c2d,8086:1c26\nsoftdep ehci_pci pre: vfio-pci\n$/,
    );
    expect(fs.readFileSync(path.join(dir, 'etc/initramfs-tools/modules'), 'utf8')).toBe(
      DEBIAN_MODULES +
        'dm_crypt\n# devgate usb-controllers hide: vfio-pci in the initramfs, before the USB host drivers\nvfio\nvfio_iommu_type1\nvfio_pci\n',
    );
    expect(fs.existsSync(path.join(dir, MANIFEST_FILE))).toBe(true);
    expect(refusal(() => applyHide(plan))).toMatch(/^DG_HIDE_ALREADY_APPLIED/);

    const undone = undoHide(dir);
    expect(undone).toEqual({
      restored: ['etc/initramfs-tools/modules'],
      removed: ['etc/modprobe.d/devgate-usb-controllers.conf'],
      commands: ['update-initramfs -u -k all'],
    });
    expect(snapshot(dir)).toEqual(before);
    expect(refusal(() => undoHide(dir))).toMatch(
      /^DG_HIDE_NOTHING_TO_UNDO: nothing to undo: .*usb-controllers-hide\.json does not exist$/,
    );
  });

  it('refuses to hide the controller of the only keyboard (Shuttle DH170), with the reason', () => {
    expect(refusal(() => planHide(request(tree('SHUTTLE_DH170_WITH_USB_DISK.txt'), root('debian'), ['00_14.0'])))).toBe(
      'DG_HIDE_REFUSED: refusing to hide these controllers at boot: it would leave no keyboard for the disk passphrase: ' +
        'input6 "USB Keyboard" is behind dom0:00_14.0 (0000:00:14.0)',
    );
    // And with nothing named, nothing there is safe to hide.
    expect(refusal(() => planHide(request(tree('SHUTTLE_DH170_WITH_USB_DISK.txt'), root('debian'))))).toBe(
      'DG_HIDE_REFUSED: refusing to hide these controllers at boot: no USB controller is safe for a USB VM; name the controllers to hide',
    );
  });

  it('refuses it too when a software keyboard (keyd) mirrors the USB one: it is gone in the initramfs', () => {
    const shuttle = tree('SHUTTLE_DH170_WITH_USB_DISK.txt');
    const keyd = recordOf('/devices/virtual/input/input99', 'input', {
      NAME: '"keyd virtual keyboard"',
      ID_INPUT: '1',
      ID_INPUT_KEYBOARD: '1',
    });
    const withKeyd = new HostTree([...shuttle.devices(), keyd], shuttle.usage);
    expect(refusal(() => planHide(request(withKeyd, root('debian'), ['00_14.0'])))).toMatch(
      /^DG_HIDE_REFUSED: .*it would leave no keyboard for the disk passphrase: input6 "USB Keyboard" is behind dom0:00_14.0/,
    );
  });

  it('refuses to hide the boot device (HP booted from its Type-C stick), warns about AEM for the other stick', () => {
    const booted = tree('HP_ELITEBOOK_835_13_INCH_G10_RECOVERY_USB_CONNECTED.txt', ['8:1']); // sda1
    expect(refusal(() => planHide(request(booted, root('debian'), ['00_08.3-00_00.4'])))).toBe(
      'DG_HIDE_REFUSED: refusing to hide these controllers at boot: it would hide the boot device: the host uses sda behind ' +
        'dom0:00_08.3-00_00.4 (0000:c5:00.4) (sda1 mounted)',
    );
    const plan = planHide(request(booted, root('debian'), ['0000:c3:00.3', 'dom0:00_08.3-00_00.3']));
    expect(plan.warnings[0]).toBe(
      'USB storage is behind dom0:00_08.1-00_00.3 (0000:c3:00.3) (sdb): an Anti Evil Maid stick or a USB boot device there ' +
        'will not be found at boot, and AEM hangs',
    );
    expect(plan.warnings).toContain(
      'the firmware, the boot loader and the kernel use the controllers until the initramfs loads vfio-pci: ' +
        'a device plugged in now is exposed to the host during early boot',
    );
  });

  it('Fedora: dracut forces the vfio modules in, and the same undo', () => {
    const dir = root('fedora');
    const before = snapshot(dir);
    const plan = planHide(request(tree('LENOVO_T420.txt'), dir, ['00_1d.0']));
    expect(plan.commands).toEqual(['dracut --force --regenerate-all']);
    expect(planDiff(plan)).toContain(
      '+++ b/etc/dracut.conf.d/devgate-usb-controllers.conf\n@@ -0,0 +1,3 @@\n' +
        '+# Written by devgate usb-controllers hide: vfio-pci in the initramfs, loaded before the USB host drivers.\n' +
        '+force_drivers+=" vfio vfio_iommu_type1 vfio_pci "\n+install_items+=" /etc/modprobe.d/devgate-usb-controllers.conf "\n',
    );
    applyHide(plan);
    expect(fs.existsSync(path.join(dir, 'etc/dracut.conf.d/devgate-usb-controllers.conf'))).toBe(true);
    undoHide(dir);
    expect(snapshot(dir)).toEqual(before); // etc/dracut.conf.d was created by apply, and is gone again
  });

  it('two controllers with the same ids, one hidden: a driver-override rule by address instead of ids', () => {
    // A Ryzen-like host: two identical xHCI functions (1022:149c), and an i8042 keyboard.
    const xhci = (sbdf: string) =>
      recordOf(`/devices/pci0000:00/0000:00:08.1/${sbdf}`, 'pci', {
        DRIVER: 'xhci_hcd',
        PCI_ID: '1022:149C',
        PCI_CLASS: 'C0330',
      });
    const host = new HostTree([
      recordOf('/devices/pci0000:00/0000:00:00.0', 'pci', { PCI_ID: '1022:1480', PCI_CLASS: '60000' }),
      recordOf('/devices/pci0000:00/0000:00:08.1', 'pci', {
        DRIVER: 'pcieport',
        PCI_ID: '1022:1484',
        PCI_CLASS: '60400',
      }),
      xhci('0000:0a:00.1'),
      xhci('0000:0a:00.3'),
      recordOf('/devices/platform/i8042/serio0/input/input3', 'input', { ID_INPUT: '1', ID_INPUT_KEYBOARD: '1' }),
    ]);
    const plan = planHide(request(host, root('debian'), ['00_08.1-00_00.3']));
    expect(plan.method).toBe('driver-override');
    expect(planDiff(plan)).toContain(
      "+install xhci_pci /bin/sh -c 'for d in 0000:0a:00.3; do echo vfio-pci > /sys/bus/pci/devices/$d/driver_override; done; " +
        "/sbin/modprobe vfio-pci; /sbin/modprobe --ignore-install xhci_pci $CMDLINE_OPTS'\n",
    );
    expect(plan.warnings).toContain(
      '0000:0a:00.1 has the same ids as a chosen controller: each chosen controller is named by its address (driver_override) instead of by ids',
    );
  });

  it('--undo refuses, restoring nothing, when a file changed since devgate wrote it', () => {
    const dir = root('debian');
    applyHide(planHide(request(tree('LENOVO_T420.txt'), dir)));
    const conf = path.join(dir, 'etc/modprobe.d/devgate-usb-controllers.conf');
    fs.appendFileSync(conf, 'options snd_hda_intel power_save=0\n');
    const modules = fs.readFileSync(path.join(dir, 'etc/initramfs-tools/modules'));
    expect(refusal(() => undoHide(dir))).toBe(
      `DG_HIDE_FILE_CHANGED: ${conf} changed since devgate wrote it; nothing was restored`,
    );
    expect(fs.readFileSync(path.join(dir, 'etc/initramfs-tools/modules'))).toEqual(modules);
  });
});
