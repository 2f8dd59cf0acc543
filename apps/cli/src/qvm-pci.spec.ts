import * as fs from 'node:fs';
import { PCI_IDS_PATHS } from '@devgate/driver-pci';
import { recordedFixture } from '@devgate/testkit';
import { runCaptured } from './test-io.js';

// qvm-pci on recorded machines: the output formats and exit codes of Qubes' qvm-pci on the same
// device set (shared/reference/qubes-devices.md, 1.2 and 1.3). A recording is read in-process.
const T420 = recordedFixture('LENOVO_T420.txt');
const KINESIS = recordedFixture('usbkbd.umockdev');
/** Names come from pci.ids (hwdata, installed by .ci/run), as Qubes takes them from libvirt's. */
const names = PCI_IDS_PATHS.some((file) => fs.existsSync(file));

describe('qvm-pci list formats', () => {
  it('Qubes 4.3: BACKEND:DEVID  DESCRIPTION  USED BY, header only on a terminal, bridges and host devices left out', async () => {
    const piped = await runCaptured('qvm-pci', ['--recording', T420]);
    expect(piped.code).toBe(0);
    const ports = piped.out
      .split('\n')
      .filter(Boolean)
      .map((line) => line.split(/\s{2,}/)[0]);
    expect(ports).toEqual([
      'dom0:00_16.0',
      'dom0:00_16.3',
      'dom0:00_19.0',
      'dom0:00_1a.0',
      'dom0:00_1b.0',
      'dom0:00_1c.1-00_00.0',
      'dom0:00_1c.4-00_00.0',
      'dom0:00_1d.0',
      'dom0:00_1f.2',
      'dom0:00_1f.3',
    ]);
    const tty = await runCaptured('qvm-pci', ['list', '--recording', T420], true);
    expect(tty.out.split('\n')[0]).toMatch(/^BACKEND:DEVID +DESCRIPTION +USED BY$/);
    if (names) {
      expect(piped.out).toContain(
        'dom0:00_1a.0          PCI_USB: Intel Corporation 6 Series/C200 Series Chipset Family USB Enhanced Host Controller #2\n',
      );
    }
  });

  it('--with-sbdf adds the SBDF column after the port (and qvm-device pci is the same program)', async () => {
    const sbdf = await runCaptured('qvm-device', ['pci', 'list', '--with-sbdf', '--recording', T420], true);
    expect(sbdf.code).toBe(0);
    const lines = sbdf.out.split('\n');
    expect(lines[0]).toMatch(/^BACKEND:DEVID +SBDF +DESCRIPTION +USED BY$/);
    expect(lines.find((l) => l.startsWith('dom0:00_1c.1-00_00.0'))).toMatch(
      /^dom0:00_1c\.1-00_00\.0 +0000:03:00\.0 +Network: /,
    );
    const alias = await runCaptured('qvm-pci', ['ls', '--resolve-paths', '--recording', T420], true);
    expect(alias.out).toBe(sbdf.out);
  });

  it('the old form (qvm-pci -l): `<subclass>: <vendor> <device>`', async () => {
    const legacy = await runCaptured('qvm-pci', ['-l', '--recording', KINESIS]);
    expect(legacy).toMatchObject({ code: 0, err: '' });
    // A one-device recording cannot say the Kinesis keyboard is the host's only one: the controller stays listed.
    expect(legacy.out).toBe(
      'dom0:00_1a.0  USB controller: Intel Corporation 5 Series/3400 Series Chipset USB2 Enhanced Host Controller\n',
    );
  });

  it('info: the description, the device id and the data, the devices behind it among them', async () => {
    const info = await runCaptured('qvm-pci', ['info', '--recording', KINESIS, 'dom0:00_1a.0']);
    expect(info.code).toBe(0);
    expect(info.out.split('\n').slice(0, 3)).toEqual([
      'PCI_USB: Intel Corporation 5 Series/3400 Series Chipset USB2 Enhanced Host Controller',
      'device ID: 0x8086:0x3b3c::p0c0320',
      'sbdf: 0000:00:1a.0',
    ]);
    expect(info.out).toContain('input devices: input5 "HID 05f3:0007" (keyboard)\n');
    expect(info.out).toContain('driver: ehci-pci\n');
  });

  it('qvm-device --list-device-classes includes pci', async () => {
    const classes = await runCaptured('qvm-device', ['--list-device-classes']);
    expect(classes.out.split('\n')).toContain('pci');
  });
});

describe('qvm-pci errors and exit codes', () => {
  it('an unknown VM is a usage error (2); an unknown port a runtime error (1), in Qubes’ words', async () => {
    const vm = await runCaptured('qvm-pci', ['list', '--recording', T420, 'nosuchvm']);
    expect(vm.code).toBe(2);
    expect(vm.err).toMatch(/\nqvm-pci: error: no such domain: 'nosuchvm'\n$/);
    const port = await runCaptured('qvm-pci', ['info', '--recording', T420, 'dom0:00_1e.0']);
    expect(port.code).toBe(1);
    expect(port.err).toContain("qvm-pci: error: backend vm dom0 doesn't expose pci device '00_1e.0'");
  });

  it('assign without --required is refused as Qubes’ client refuses it (exit 1)', async () => {
    const assign = await runCaptured('qvm-pci', ['assign', '--recording', T420, 'work', 'dom0:00_1a.0']);
    expect(assign.code).toBe(1);
    expect(assign.err).toBe(
      'qvm-pci: error: PCI devices cannot be assigned as not required.\nqvm-pci: hint: use qvm-pci assign --required VM DEVICE\n',
    );
  });

  it('attach: a host bridge is refused with its reason, and a recording hands nothing over', async () => {
    const dir = fs.mkdtempSync('/tmp/devgate-qvmpci-');
    try {
      const domains = `${dir}/domains.json`;
      fs.writeFileSync(domains, JSON.stringify({ dom0: 'dom0', domains: { work: { qmp: `${dir}/work.qmp` } } }));
      const bridge = await runCaptured('qvm-pci', [
        'attach',
        '--recording',
        T420,
        '--domains',
        domains,
        'work',
        'dom0:00_00.0',
      ]);
      expect(bridge.code).toBe(1);
      expect(bridge.err).toContain('qvm-pci: error: Device dom0:00_00.0 is in use in its backend (the host bridge)');
      const ehci = await runCaptured('qvm-pci', [
        'attach',
        '--recording',
        T420,
        '--domains',
        domains,
        'work',
        'dom0:00_1a.0',
      ]);
      expect(ehci.code).toBe(1);
      expect(ehci.err).toMatch(
        /^qvm-pci: error: Device dom0:00_1a\.0 cannot be attached: dom0 is read from recording:/,
      );
      const reattach = await runCaptured('qvm-pci', [
        'detach',
        '--reattach',
        '--recording',
        T420,
        '--domains',
        domains,
        'work',
        'dom0:00_1a.0',
      ]);
      expect(reattach.code).toBe(1);
      expect(reattach.err).toContain('nothing there is bound to vfio-pci');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
