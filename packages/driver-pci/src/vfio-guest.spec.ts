import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Guest, bootGuest } from '@devgate/guest-lab';

// VFIO on a real kernel. This machine has no IOMMU, so the host here is a Linux guest (the guest lab:
// Debian's kernel under QEMU, booted from this machine's userland) with an emulated Intel IOMMU, its
// own USB keyboard on the first xHCI, and a second xHCI in a PCIe slot with a USB stick on it. devgate
// runs inside the guest as it runs on a real host: `qvm-pci attach` binds the second controller's
// IOMMU group to vfio-pci and hands it to a VM of the guest (a nested QEMU, paused, registered in
// domains.json as any VM of one's own); then `qvm-pci detach --reattach` gives it back to xhci_hcd.
// Every other device of the guest keeps its driver throughout. Each devgate command costs about a
// minute under TCG, hence the timeouts.
jest.setTimeout(20 * 60_000);

const CLI = path.resolve(__dirname, '../../../apps/cli/bin');
const DEVGATE = `node ${CLI}/devgate.cjs`;
const QVM_PCI = `node ${CLI}/qvm-pci.cjs`;
const COMMAND_MS = 6 * 60_000;
/** In-process devgate inside the guest: its own registry and state, on the guest's tmpfs. */
const env = { DEVGATE_DOMAINS: '/tmp/lab/domains.json', DEVGATE_STATE_DIR: '/tmp/lab/state' };
/**
 * The frontend: a paused q35 with empty PCIe root ports, as devgate's connector expects of a VM. With
 * native PCIe hot-plug (QEMU 6.1 and later default to ACPI hot-plug on q35, which needs the guest's
 * ACPI to let go), a machine that has not run releases an unpowered slot at once on device_del.
 */
const FRONTEND = [
  'qemu-system-x86_64 -name work -machine q35 -accel tcg -S -nodefaults -no-user-config -display none -m 64',
  '-device qemu-xhci,id=xhci',
  '-device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2',
  '-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off',
  '-qmp unix:/tmp/lab/work.qmp,server=on,wait=off -pidfile /tmp/lab/work.pid -daemonize',
].join(' ');
const REGISTRY = JSON.stringify({ dom0: 'dom0', domains: { work: { qmp: '/tmp/lab/work.qmp' } } });

let guest: Guest;
let stick: string;

beforeAll(async () => {
  stick = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-vfio-')), 'stick.img');
  fs.writeFileSync(stick, '');
  fs.truncateSync(stick, 4 << 20);
  guest = await bootGuest({
    name: 'vfio-host',
    iommu: true,
    memoryMb: 1536,
    cpus: 2,
    devices: [{ kind: 'usb-kbd' }],
    extraQemuArgs: [
      // A USB card in a PCIe slot (its own root port, so a bus reset is possible), with a stick on it.
      '-device', 'pcie-root-port,id=slot3,bus=pcie.0,chassis=3,slot=3',
      '-device', 'qemu-xhci,id=xhci2,bus=slot3',
      '-blockdev', `driver=file,node-name=stick2,filename=${stick},read-only=on`,
      '-device', 'usb-storage,drive=stick2,bus=xhci2.0',
    ], // prettier-ignore
  });
  process.stdout.write(`vfio guest: boot ${guest.bootMs} ms (${guest.accel})\n`);
}, 10 * 60_000);

afterAll(async () => {
  await guest?.dispose();
  if (stick) fs.rmSync(path.dirname(stick), { recursive: true, force: true });
});

async function sh(command: string): Promise<string> {
  return guest.check(command, { env, timeoutMs: COMMAND_MS });
}

/** Every PCI function of the guest and its driver (`-` for none). */
async function drivers(): Promise<Record<string, string>> {
  const out = await sh(
    'for d in /sys/bus/pci/devices/*; do echo "${d##*/} $(basename "$(readlink $d/driver)" 2>/dev/null || true)"; done',
  );
  return Object.fromEntries(
    out
      .trim()
      .split('\n')
      .map((line) => [line.split(' ')[0], line.split(' ')[1] || '-']),
  );
}

interface Controller {
  port: string;
  portId: string;
  sbdf: string;
  verdict: string;
  reasons: string[];
  iommuGroup: string | null;
  reset: { methods: string[] };
  behind: { disks: { name: string }[] };
}

it('qvm-pci attach binds the controller’s IOMMU group to vfio-pci and hands it over; detach --reattach gives it back to xhci_hcd; the host keeps its other devices', async () => {
  const before = await drivers();
  expect(before['0000:00:03.0']).toBe('xhci_hcd'); // the guest's own keyboard is on it
  const keyboards = () => sh('grep -l "QEMU USB Keyboard" /sys/class/input/input*/name');
  const keyboard = await keyboards();
  await guest.waitForPath('/sys/class/block/sda', { timeoutMs: 60_000 }); // the stick on the second xHCI

  // The frontend VM, and the report.
  await sh(`mkdir -p /tmp/lab && ${FRONTEND} && echo '${REGISTRY}' > /tmp/lab/domains.json`);
  const reportText = await sh(`${DEVGATE} usb-controllers --json`);
  const report = JSON.parse(reportText) as Controller[];
  const own = report.find((c) => c.sbdf === '0000:00:03.0')!;
  expect(own.verdict).toBe('unsafe');
  // The guest also has q35's PS/2 keyboard, so the USB one is not its only keyboard.
  expect(own.reasons[0]).toMatch(/^the host's keyboard input\d+ "QEMU QEMU USB Keyboard" is behind it$/);
  const card = report.find((c) => c.sbdf !== '0000:00:03.0')!;
  expect(card).toMatchObject({ verdict: 'safe for a USB VM', reset: { methods: ['bus'] } });
  expect(card.iommuGroup).toMatch(/^\d+$/);
  expect(card.behind.disks.map((d) => d.name)).toEqual(['sda']);
  const device = card.port;

  // Attach: the whole group on vfio-pci, the VM holds the device, nothing else changed.
  await sh(`${QVM_PCI} attach work ${device}`);
  const attached = await drivers();
  expect(attached).toEqual({ ...before, [card.sbdf]: 'vfio-pci' });
  await sh(`test -c /dev/vfio/${card.iommuGroup}`);
  await guest.waitForPath('/sys/class/block/sda', { exists: false, timeoutMs: 60_000 }); // the host lost the stick
  expect(await keyboards()).toBe(keyboard);
  // What the VM holds, read back from its QEMU (the qdev id carries the attachment).
  const listed = await sh(`${QVM_PCI} list`);
  expect(listed).toMatch(new RegExp(`^${device.replace(/[.]/g, '\\.')} +PCI_USB: .* +work \\(attached\\)$`, 'm'));

  // Detach and give it back: xhci_hcd takes the controller again, and the stick comes back.
  const back = await guest.exec(`${QVM_PCI} detach --reattach work ${device}`, { env, timeoutMs: COMMAND_MS });
  expect({ ...back, stderr: back.stderr.replace(/^Warning: .*\n/, '') }).toMatchObject({
    code: 0,
    stdout: `${card.sbdf}: xhci_hcd\n`,
    stderr: '',
  });
  expect(back.stderr).toContain(`Warning: ${device} (${card.sbdf}) goes back to the host's drivers`);
  expect(await drivers()).toEqual(before);
  await guest.waitForPath('/sys/class/block/sda', { timeoutMs: 60_000 });
  expect(await keyboards()).toBe(keyboard);
});
