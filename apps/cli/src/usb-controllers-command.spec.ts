import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { recordedFixture } from '@devgate/testkit';
import { runCaptured } from './test-io.js';

const SHUTTLE = recordedFixture('SHUTTLE_DH170_WITH_USB_DISK.txt');
const T420 = recordedFixture('LENOVO_T420.txt');

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

/** A Debian-like root to configure: os-release and initramfs-tools' modules file. */
function debianRoot(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-hidecli-'));
  dirs.push(dir);
  fs.mkdirSync(path.join(dir, 'etc/initramfs-tools'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'etc/os-release'), 'ID=debian\nVERSION_ID="12"\n');
  fs.writeFileSync(path.join(dir, 'etc/initramfs-tools/modules'), '# List of modules\nraid1\n');
  return dir;
}

function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) =>
    fs.readdirSync(d).forEach((name) => {
      const file = path.join(d, name);
      const stat = fs.statSync(file);
      if (stat.isDirectory()) walk(file);
      out[path.relative(dir, file)] = stat.isDirectory()
        ? 'dir'
        : `${stat.mode & 0o777}:${fs.readFileSync(file, 'hex')}`;
    });
  walk(dir);
  return out;
}

describe('devgate usb-controllers', () => {
  it('reports each controller with its verdict and reasons (Shuttle DH170: the only keyboard)', async () => {
    const { code, out } = await runCaptured('devgate', ['usb-controllers', '--recording', SHUTTLE]);
    expect(code).toBe(0);
    expect(out.split('\n')[0]).toMatch(/^CONTROLLER +SBDF +KIND +VERDICT +DESCRIPTION$/);
    expect(out.split('\n')[1]).toMatch(/^dom0:00_14\.0 +0000:00:14\.0 +XHCI +unsafe +PCI_USB: /);
    expect(out).toContain(
      '  - the host\'s only keyboard (input6 "USB Keyboard") is behind it: nothing would be left to type the disk passphrase or log in\n',
    );
    expect(out).toContain(
      '  behind it: 1-4 abcd:1234, 1-9 0461:0010 "USB Keyboard", 1-11 8087:07dc, 1-14 05e3:0727 "USB Storage"\n',
    );
  });

  it('--json for scripts', async () => {
    const { out } = await runCaptured('devgate', ['usb-controllers', '--json', '--recording', T420]);
    const report = JSON.parse(out) as { port: string; verdict: string; behind: { usbDevices: { busid: string }[] } }[];
    expect(report.map((c) => [c.port, c.verdict])).toEqual([
      ['dom0:00_1a.0', 'safe for a USB VM'],
      ['dom0:00_1d.0', 'safe for a USB VM'],
    ]);
    expect(report[0].behind.usbDevices.map((u) => u.busid)).toContain('1-1.6');
  });

  it('on this machine: every USB controller /sys has (none here), with the IOMMU read from sysfs', async () => {
    const controllers = fs
      .readdirSync('/sys/bus/pci/devices')
      .filter((d) => /^0x0c03[0-3]0$/.test(fs.readFileSync(`/sys/bus/pci/devices/${d}/class`, 'utf8').trim()));
    const { code, out } = await runCaptured('devgate', ['usb-controllers', '--json']);
    expect(code).toBe(0);
    const report = JSON.parse(out) as { sbdf: string; reasons: string[] }[];
    expect(report.map((c) => c.sbdf).sort()).toEqual(controllers.sort());
    const iommu = fs.existsSync('/sys/kernel/iommu_groups') && fs.readdirSync('/sys/kernel/iommu_groups').length > 0;
    for (const c of report) expect(c.reasons.some((r) => r.startsWith('this host has no IOMMU'))).toBe(!iommu);
  });
});

describe('devgate usb-controllers hide', () => {
  it('--plan shows the diff, --apply writes it, --undo restores the root byte for byte', async () => {
    const root = debianRoot();
    const before = tree(root);
    const plan = await runCaptured('devgate', [
      'usb-controllers',
      'hide',
      '--plan',
      '--recording',
      T420,
      '--root',
      root,
      '00_1d.0',
    ]);
    expect(plan.code).toBe(0);
    expect(plan.out).toContain('+options vfio-pci ids=8086:1c26\n+softdep ehci_pci pre: vfio-pci\n');
    expect(plan.out).toContain(
      ' raid1\n+# devgate usb-controllers hide: vfio-pci in the initramfs, before the USB host drivers\n+vfio\n',
    );
    expect(plan.out).toContain('then rebuild the initramfs: update-initramfs -u -k all\n');
    expect(plan.err).toContain('warning: the firmware, the boot loader and the kernel use the controllers');
    expect(tree(root)).toEqual(before);

    const apply = await runCaptured('devgate', [
      'usb-controllers',
      'hide',
      '--apply',
      '--recording',
      T420,
      '--root',
      root,
      '00_1d.0',
    ]);
    expect(apply.code).toBe(0);
    expect(apply.out).toContain('written; now rebuild the initramfs: update-initramfs -u -k all\n');
    expect(fs.readFileSync(path.join(root, 'etc/modprobe.d/devgate-usb-controllers.conf'), 'utf8')).toContain(
      'options vfio-pci ids=8086:1c26\n',
    );
    const again = await runCaptured('devgate', [
      'usb-controllers',
      'hide',
      '--apply',
      '--recording',
      T420,
      '--root',
      root,
    ]);
    expect(again.code).toBe(1);
    expect(again.err).toContain('controllers are already hidden by devgate');

    const undo = await runCaptured('devgate', ['usb-controllers', 'hide', '--undo', '--root', root]);
    expect(undo.code).toBe(0);
    expect(undo.out).toBe(
      `restored ${root}/etc/initramfs-tools/modules\nremoved ${root}/etc/modprobe.d/devgate-usb-controllers.conf\n` +
        'now rebuild the initramfs: update-initramfs -u -k all\n',
    );
    expect(tree(root)).toEqual(before);
  });

  it('refuses a plan that hides the only keyboard’s controller, with the reason, and writes nothing', async () => {
    const root = debianRoot();
    const before = tree(root);
    const refused = await runCaptured('devgate', [
      'usb-controllers',
      'hide',
      '--apply',
      '--recording',
      SHUTTLE,
      '--root',
      root,
      'dom0:00_14.0',
    ]);
    expect(refused.code).toBe(1);
    expect(refused.err).toBe(
      'devgate: error: refusing to hide these controllers at boot: it would leave no keyboard for the disk passphrase: ' +
        'input6 "USB Keyboard" is behind dom0:00_14.0 (0000:00:14.0)\n' +
        "devgate: hint: devgate usb-controllers shows each controller's verdict and reasons\n",
    );
    expect(tree(root)).toEqual(before);
  });
});
