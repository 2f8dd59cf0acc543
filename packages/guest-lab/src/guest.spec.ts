import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Guest, bootGuest } from './guest';
import { createDiskImage } from './images';

// A real Linux guest (TCG here, KVM where it runs a guest): commands, waiting on the guest's own
// events, and plugging and pulling emulated USB devices over QMP. Nothing waits a fixed time.
jest.setTimeout(240_000);

// This checkout's own build: the guest sees the host's files at the same paths.
const DEVGATE = path.resolve(__dirname, '../../../apps/cli/bin/devgate.cjs');
let guest: Guest;

beforeAll(async () => {
  // With an emulated IOMMU: the USB controller's DMA goes through it, as on hosts that pass devices through.
  guest = await bootGuest({ name: 'spec-guest', devices: [{ kind: 'usb-kbd' }], iommu: true });
  process.stdout.write(`guest-lab: boot ${guest.bootMs} ms (${guest.accel})\n`);
});

afterAll(async () => {
  const { dir, pid } = guest ?? {};
  await guest?.dispose();
  if (dir) expect(fs.existsSync(dir)).toBe(false);
  if (pid) expect(fs.existsSync(`/proc/${pid}`) && !isZombie(pid)).toBe(false);
});

function isZombie(pid: number): boolean {
  try {
    return / [ZX] /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\)/, ''));
  } catch {
    return true;
  }
}

describe('a lab guest', () => {
  it('runs commands inside: stdout, stderr, exit code, input and environment come back', async () => {
    const node = await guest.exec([
      'node',
      '-e',
      'console.log(process.version); console.error("to stderr"); process.exit(3)',
    ]);
    expect(node).toMatchObject({ stdout: `${process.version}\n`, stderr: 'to stderr\n', code: 3, signal: null });

    const shell = await guest.exec('read line; echo "$line from $(hostname) as $(id -u), $WHO"', {
      input: 'hello\n',
      env: { WHO: 'the host' },
    });
    expect(shell).toMatchObject({ stdout: 'hello from spec-guest as 0, the host\n', code: 0 });

    // It is a guest: its own kernel (Debian's), its own USB bus; the host has neither.
    const uname = await guest.check(['uname', '-r']);
    expect(uname.trim()).toMatch(/-amd64$/);
    expect(fs.existsSync('/sys/bus/usb/devices/1-1')).toBe(false);
    await guest.waitForPath('/sys/bus/usb/devices/1-1/idVendor');
    const groups = await guest.check('readlink /sys/bus/pci/devices/*/iommu_group | sort -u | wc -l');
    expect(Number(groups)).toBeGreaterThan(1);

    await expect(guest.check('echo oops >&2; exit 7')).rejects.toMatchObject({
      code: 'DG_GUEST_COMMAND_FAILED',
      message: expect.stringContaining('exited with 7: oops'),
    });
    const killed = await guest.exec(['sleep', '60'], { timeoutMs: 200 });
    expect(killed).toMatchObject({ code: null, signal: 'SIGKILL' });
  });

  it('waits with a deadline, and says what it waited for', async () => {
    const started = Date.now();
    await expect(guest.waitForPath('/no/such/file', { timeoutMs: 300 })).rejects.toMatchObject({
      code: 'DG_GUEST_TIMEOUT',
      message: expect.stringContaining('/no/such/file'),
    });
    expect(Date.now() - started).toBeLessThan(10_000);
    // A file made later in the guest ends the wait (inotify, not a fixed sleep).
    const waiting = guest.waitForPath('/tmp/later/flag', { timeoutMs: 30_000 });
    await guest.check('mkdir -p /tmp/later && touch /tmp/later/flag');
    await waiting;
  });

  it('runs devgate inside the guest, which lists the guest keyboard as a USB device', async () => {
    const devices = JSON.parse(await guest.check(['node', DEVGATE, 'list', '--json', '--class', 'usb'])) as {
      portId: string;
      deviceId: string;
      interfaces: string[];
    }[];
    expect(devices).toContainEqual(
      expect.objectContaining({
        portId: '1-1',
        deviceId: expect.stringMatching(/^0627:0001:.*:u030101$/),
        interfaces: ['u030101'],
        name: 'QEMU USB Keyboard',
      }),
    );
  });

  it('plugs a keyboard and a stick into the running guest, which sees them in sysfs; pulls them out again', async () => {
    const image = createDiskImage(path.join(guest.dir, 'data.img'), {
      label: 'LABDATA',
      files: { 'hello.txt': 'hello from the host\n' },
    });
    const mark = await guest.ueventMark();
    const keyboard = await guest.plug({ kind: 'usb-kbd' });
    const stick = await guest.plug({ kind: 'usb-storage', image, readOnly: true });
    expect([keyboard, stick]).toEqual(['kbd2', 'stick1']);

    const input = await guest.waitForUevent(
      { ACTION: 'add', SUBSYSTEM: 'input', NAME: '"QEMU QEMU USB Keyboard"' },
      { since: mark },
    );
    const disk = await guest.waitForUevent({ ACTION: 'add', SUBSYSTEM: 'block', DEVTYPE: 'disk' }, { since: mark });
    const usbDevices = (await guest.uevents(mark)).filter(
      (e) => e.action === 'add' && e.props['DEVTYPE'] === 'usb_device',
    );
    expect(usbDevices.map((e) => e.props['PRODUCT'])).toEqual(expect.arrayContaining(['627/1/0', '46f4/1/0']));

    const devname = path.basename(disk.props['DEVNAME']); // udevadm shows /dev/sdX
    const sysfs = await guest.check(
      `for d in /sys/bus/usb/devices/*-*; do [ -e $d/idVendor ] && echo "$(cat $d/idVendor):$(cat $d/idProduct) $(cat $d/product)"; done; ` +
        `cat /sys/block/${devname}/removable /sys/block/${devname}/ro`,
    );
    expect(sysfs.split('\n').filter((l) => l === '0627:0001 QEMU USB Keyboard')).toHaveLength(2);
    expect(sysfs).toContain('46f4:0001 QEMU USB HARDDRIVE\n1\n1\n');
    expect(input.devpath).toMatch(/\/usb1\/1-\d+\//);

    // The guest reads what the host put on the stick.
    expect(
      await guest.check(`mkdir -p /mnt/stick && mount -o ro /dev/${devname} /mnt/stick && cat /mnt/stick/hello.txt`),
    ).toBe('hello from the host\n');
    await guest.check('umount /mnt/stick');

    await expect(guest.unplug('usb-kbd')).rejects.toMatchObject({ code: 'DG_GUEST_AMBIGUOUS_DEVICE' });
    const pulled = await guest.ueventMark();
    await guest.unplug(keyboard);
    await guest.unplug('usb-storage'); // the only stick
    await guest.waitForPath(`/sys/class/block/${devname}`, { exists: false });
    await guest.waitForPath(`/sys${input.devpath}`, { exists: false });
    await guest.waitForUevent({ ACTION: 'remove', DEVTYPE: 'usb_device', PRODUCT: '627/1/0' }, { since: pulled });
    await guest.waitForUevent({ ACTION: 'remove', DEVTYPE: 'usb_device', PRODUCT: '46f4/1/0' }, { since: pulled });
    expect(await guest.devices()).toEqual([{ id: 'kbd1', kind: 'usb-kbd' }]);
  });
});
