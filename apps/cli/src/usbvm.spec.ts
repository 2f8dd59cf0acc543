import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { Devgated } from '@devgate/daemon';
import { defaultConfig } from '@devgate/service';
import { readRegistrySync } from '@devgate/backend-qemu';
import { withLabGuest } from '@devgate/guest-lab';
import { AgentSource } from '@devgate/backend-agent';
import { until } from '@devgate/testkit';
import { runCaptured } from './test-io';

// The USB VM with real guests (TCG here): `devgate usbvm create --emulated` boots sys-usb with
// devgate-agent in it, `devgate lab up --os work` a frontend, devgated runs in this process. A stick
// plugged into sys-usb over QMP is listed as sys-usb:sda/sda1; `qvm-block -a work sys-usb:sda1`
// gives it to work over NBD from sys-usb's agent, QEMU to QEMU; the host's kernel never has a block
// device, a mount or a udev entry for it (sampled all along). Pulling it out of sys-usb detaches it
// from work within 1 s (audited), and an auto-attach assignment attaches it again when it is back.
// A USB serial adapter in sys-usb reaches work through usbredir. `usbvm remove` leaves the host as
// it was. Every wait is on an event or a condition, with a deadline.
jest.setTimeout(600_000);

let dir: string;
let registryFile: string;
let stateDir: string;
let daemon: Devgated | undefined;
let image: string;
const timings: Record<string, number> = {};
const hostViolations: string[] = [];
const incidents: string[] = [];
let sampler: NodeJS.Timeout | undefined;

const devgate = (...argv: string[]) => runCaptured('devgate', argv);
const qvmBlock = (...argv: string[]) => runCaptured('qvm-block', argv);
const qvmUsb = (...argv: string[]) => runCaptured('qvm-usb', argv);
const inWork = (script: string) => devgate('lab', 'exec', 'work', '--', 'sh', '-c', script);

// -- what the host itself has: block devices and udev entries (other tests' loop devices aside)

function hostBlockDevices(): string[] {
  return fs.readdirSync('/sys/class/block').filter((name) => !/^loop\d+(p\d+)?$/.test(name));
}

function hostUdevEntries(): string[] {
  const data = '/run/udev/data';
  if (!fs.existsSync(data)) return [];
  return fs.readdirSync(data).filter((entry) => {
    // `.#...`: udevd's half-written entries (renamed into place when complete, then checked).
    if (entry.startsWith('.#')) return false;
    // b7:N are loop devices; b259:N a loop partition, when /sys says so (other tests make them, and
    // may have removed it again: this host has no other extended-major block device).
    const block = /^b(\d+):(\d+)$/.exec(entry);
    if (block?.[1] === '7') return false;
    if (block) {
      const device = realpathOrGone(`/sys/dev/block/${block[1]}:${block[2]}`);
      return device === undefined ? block[1] !== '259' : !device.includes('/loop');
    }
    return true;
  });
}

function realpathOrGone(file: string): string | undefined {
  try {
    return fs.realpathSync(file);
  } catch {
    return undefined;
  }
}

function hostMounts(): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((line) => / - \S+ \/dev\/(sd|nbd|vd|sr)/.test(line));
}

let hostBefore: { block: string[]; udev: string[]; mounts: string[] };

function sampleHost(when: string): void {
  const now = { block: hostBlockDevices(), udev: hostUdevEntries(), mounts: hostMounts() };
  for (const key of ['block', 'udev', 'mounts'] as const) {
    const added = now[key].filter((entry) => !hostBefore[key].includes(entry));
    if (added.length) hostViolations.push(`${when}: the host has new ${key}: ${added.join(', ')}`);
  }
}

/**
 * Plugs the stick into sys-usb (QMP device_add). With a serial number of its own: QEMU's default
 * one names the port, and a real stick's does not change when it is plugged in elsewhere.
 */
async function plugStick(): Promise<void> {
  await withLabGuest('sys-usb', { registryFile }, (guest) =>
    guest.plug({ kind: 'usb-storage', image, id: 'stick1', serial: 'DGSTICK0001' }),
  );
}

interface AuditRow {
  backend?: string;
  portId?: string;
  frontend?: string;
  outcome: string;
}

interface DeviceRow {
  port: { backend: string; portId: string; devclass: string };
  attachment?: { frontend: string };
  hiddenReason?: string;
  data: Record<string, unknown>;
}

const listed = (devclass: string) =>
  daemon!.manager.list({ devclass, backend: 'sys-usb', includeHidden: true }) as unknown as DeviceRow[];
const holderOf = (portId: string, devclass = 'block') =>
  daemon!.manager.get({ devclass, backend: 'sys-usb', portId })?.attachment?.frontend;

beforeAll(async () => {
  hostBefore = { block: hostBlockDevices(), udev: hostUdevEntries(), mounts: hostMounts() };
  sampler = setInterval(() => sampleHost('during the flow'), 100);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usbvm-'));
  registryFile = path.join(dir, 'domains.json');
  process.env.DEVGATE_DOMAINS = registryFile;
  process.env.XDG_RUNTIME_DIR = path.join(dir, 'run'); // the lab's state directory goes there
  stateDir = path.join(dir, 'run', 'devgate', 'lab');

  // A stick image made on the host as a plain file (no loop device): a DOS partition table and an
  // ext4 partition holding one file.
  image = path.join(dir, 'stick.img');
  const files = path.join(dir, 'files');
  fs.mkdirSync(files);
  fs.writeFileSync(path.join(files, 'hello.txt'), 'written before it went into sys-usb\n');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 32 * 1024 * 1024);
  execFileSync('sfdisk', ['-q', image], { input: 'label: dos\nstart=2048, type=83\n' });
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'LABSTICK', '-E', 'offset=1048576', '-d', files, image, '30M']);

  const started = Date.now();
  const [usbvm, work] = await Promise.all([
    devgate('usbvm', 'create', '--emulated'),
    devgate('lab', 'up', '--os', 'work'),
  ]);
  expect(usbvm).toMatchObject({ code: 0, err: '' });
  expect(work).toMatchObject({ code: 0, err: '' });
  timings['both guests up (s)'] = (Date.now() - started) / 1000;
  process.stdout.write(`usbvm: ${usbvm.out}usbvm: ${work.out}`);

  const socket = path.join(dir, 'devgate.sock');
  process.env.DEVGATE_SOCKET = socket;
  daemon = await Devgated.start(
    {
      ...defaultConfig(),
      socket,
      stateDir: path.join(dir, 'state'),
      domains: registryFile,
      access: { users: [], groups: [] },
    },
    pino({ level: 'silent' }),
  );
  // What the agent channel did, for the log (a cut-off fails the tests below anyway).
  for (const source of daemon.manager.sources) {
    if (source instanceof AgentSource) {
      source.incidents$.subscribe((incident) =>
        incidents.push(`${new Date().toISOString()} ${JSON.stringify(incident)}`),
      );
    }
  }
});

afterAll(async () => {
  clearInterval(sampler);
  // Still there: a test failed half-way; what the agent said helps.
  if (fs.existsSync(registryFile) && readRegistrySync(registryFile).domains['sys-usb']) {
    const agentLog = await devgate('lab', 'exec', 'sys-usb', '--', 'sh', '-c', 'tail -n 30 /run/devgate-agent.log');
    process.stdout.write(`sys-usb agent log:\n${agentLog.out}${agentLog.err}\n`);
  }
  await daemon?.stop();
  // Whatever the tests did, nothing of the lab stays.
  await devgate('lab', 'down');
  delete process.env.DEVGATE_DOMAINS;
  delete process.env.DEVGATE_SOCKET;
  delete process.env.XDG_RUNTIME_DIR;
  fs.rmSync(dir, { recursive: true, force: true });
  process.stdout.write(`usbvm timings: ${JSON.stringify(timings)}\nagent incidents:\n${incidents.join('\n')}\n`);
});

describe('the USB VM: sys-usb as a real guest', () => {
  it('lists a stick plugged into sys-usb as sys-usb:sda and sys-usb:sda1 within 2 s', async () => {
    expect(readRegistrySync(registryFile).domains['sys-usb']?.agent?.usbvm).toBe(true);
    await plugStick();
    timings['device_add to sys-usb:sda1 listed (ms)'] = await until(
      'sys-usb:sda1 in devgated',
      () => listed('block').some((d) => d.port.portId === 'sda1'),
      2_000,
    );
    // Its label comes from a probe in sys-usb (blkid there, never on the host), a moment later.
    await until('the label', () => listed('block').some((d) => d.data.label === 'LABSTICK'), 10_000);
    const list = await qvmBlock('-l');
    expect(list.out).toMatch(/^sys-usb:sda +QEMU_HARDDISK \(\) 32 MiB$/m);
    expect(list.out).toMatch(/^sys-usb:sda1 +QEMU_HARDDISK \(LABSTICK\) 31 MiB$/m);
    // The stick is a USB device of sys-usb, not of the host.
    expect((await qvmUsb('-l')).out).toMatch(/^sys-usb:\d-\d+ +46f4:0001 /m);
  });

  it('qvm-block -a work sys-usb:sda1: work reads the file on it; -d takes it away', async () => {
    const started = Date.now();
    expect(await qvmBlock('-a', 'work', 'sys-usb:sda1')).toMatchObject({ code: 0, err: '' });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda')).toMatchObject({ code: 0 });
    timings['qvm-block -a to the disk in work (ms)'] = Date.now() - started;
    expect((await qvmBlock('-l')).out).toMatch(/^sys-usb:sda1 .*\(attached to 'work' as 'xvdi'\)$/m);
    const read = await inWork(
      'mkdir -p /mnt/stick && mount /dev/sda /mnt/stick && cat /mnt/stick/hello.txt && echo more > /mnt/stick/new.txt && umount /mnt/stick',
    );
    expect(read).toMatchObject({ code: 0, out: 'written before it went into sys-usb\n' });
    // The whole disk and the partition are one resource: the disk cannot go elsewhere meanwhile.
    const overlap = await qvmBlock('-a', 'work', 'sys-usb:sda');
    expect(overlap).toMatchObject({ code: 1, err: expect.stringContaining('sys-usb:sda1') });

    const ended = incidents.length;
    expect(await qvmBlock('-d', 'work', 'sys-usb:sda1')).toMatchObject({ code: 0, err: '' });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda', '--gone')).toMatchObject({ code: 0 });
    expect(holderOf('sda1')).toBeUndefined();
    // The detach tore the export down in sys-usb (its qemu-nbd is gone, its port free again).
    await until('the export ended', () => incidents.slice(ended).some((i) => i.includes('"export-ended"')), 10_000);
    // What work wrote is on the stick (read in sys-usb, where it is).
    const check = await devgate(
      'lab',
      'exec',
      'sys-usb',
      '--',
      'sh',
      '-c',
      'mkdir -p /mnt/s && mount -o ro /dev/sda1 /mnt/s && cat /mnt/s/new.txt; umount /mnt/s',
    );
    expect(check).toMatchObject({ code: 0, out: 'more\n' });
    // Mounted a moment in sys-usb: until its agent's next look at its mounts (once a second), devgated
    // may list it in use, and refuses it meanwhile.
    await until(
      'sys-usb:sda1 free again',
      () => listed('block').some((d) => d.port.portId === 'sda1' && !d.hiddenReason),
      5_000,
    );
  });

  it('--ro holds in work: the disk is read-only, writes fail', async () => {
    expect(await qvmBlock('attach', '--ro', 'work', 'sys-usb:sda1')).toMatchObject({ code: 0, err: '' });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda')).toMatchObject({ code: 0 });
    const result = await inWork(
      'cat /sys/block/sda/ro; mount /dev/sda /mnt/stick 2>/dev/null; cat /mnt/stick/hello.txt; ' +
        'echo x > /mnt/stick/other.txt; status=$?; umount /mnt/stick; ' +
        'dd if=/dev/zero of=/dev/sda bs=512 count=1 oflag=direct 2>/dev/null; echo "file $status, device $?"',
    );
    expect(result.out).toMatch(/^1\nwritten before it went into sys-usb\nfile [1-9]\d*, device [1-9]\d*\n$/);
    expect(await qvmBlock('detach', 'work', 'sys-usb:sda1')).toMatchObject({ code: 0 });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda', '--gone')).toMatchObject({ code: 0 });
  });

  it('pulled out of sys-usb while attached: detached from work within 1 s, audited, attached again when it is back', async () => {
    // An auto-attach assignment attaches at once what is there (devgated's auto-attach).
    expect(await qvmBlock('assign', 'work', 'sys-usb:sda1')).toMatchObject({ code: 0, err: '' });
    await until('the auto-attach', () => holderOf('sda1') === 'work', 10_000);
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda')).toMatchObject({ code: 0 });

    expect(await devgate('lab', 'unplug', 'sys-usb', 'stick1')).toMatchObject({ code: 0 });
    timings['pulled out to detached from work (ms)'] = await until(
      'the detach',
      () => holderOf('sda1') !== 'work',
      1_000,
    );
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda', '--gone')).toMatchObject({ code: 0 });
    // Audited once the frontend's QEMU let go (the detach's outcome is part of the entry).
    await until(
      'the surprise removal in the audit',
      async () =>
        (JSON.parse((await devgate('audit', '--json', '--action', 'surprise-removal')).out) as AuditRow[]).some(
          (e) => e.backend === 'sys-usb' && e.portId === 'sda1' && e.frontend === 'work' && e.outcome === 'ok',
        ),
      5_000,
    );

    // Back in the same port: the same device, and the assignment attaches it again.
    await plugStick();
    timings['plugged again to attached to work (ms)'] = await until(
      'the auto-attach',
      () => holderOf('sda1') === 'work',
      30_000,
    ).catch(async (error: Error) => {
      const audit = await devgate('audit', '--json');
      throw new Error(`${error.message}; audit: ${audit.out}`);
    });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda')).toMatchObject({ code: 0 });
    expect((await inWork('mount -o ro /dev/sda /mnt/stick && cat /mnt/stick/hello.txt; umount /mnt/stick')).out).toBe(
      'written before it went into sys-usb\n',
    );
    expect(await qvmBlock('unassign', 'work', 'sys-usb:sda1')).toMatchObject({ code: 0 });
    expect(await qvmBlock('-d', 'work', 'sys-usb:sda1')).toMatchObject({ code: 0 });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda', '--gone')).toMatchObject({ code: 0 });
  });

  it("qvm-usb: a USB serial adapter in sys-usb shows up in work's /sys/bus/usb/devices; -d removes it", async () => {
    expect(await devgate('lab', 'plug', 'sys-usb', 'usb-serial', '--id', 'serial1')).toMatchObject({ code: 0 });
    await until('the adapter in devgated', () => listed('usb').some((d) => d.data['vendor-id'] === '0403'), 10_000);
    const adapter = listed('usb').find((d) => d.data['vendor-id'] === '0403')!;
    const port = `sys-usb:${adapter.port.portId}`;
    expect((await qvmUsb('-l')).out).toMatch(new RegExp(`^${port} +0403:6001 `, 'm'));

    const before = (await inWork('cat /sys/bus/usb/devices/*/idVendor 2>/dev/null | sort | tr "\\n" " "')).out;
    expect(before).not.toContain('0403');
    expect(await qvmUsb('-a', 'work', port)).toMatchObject({ code: 0, err: '' });
    await until(
      'the adapter in work',
      async () =>
        (await inWork('cat /sys/bus/usb/devices/*/idVendor /sys/bus/usb/devices/*/idProduct 2>/dev/null')).out.includes(
          '0403',
        ),
      30_000,
    );
    const ids = (
      await inWork(
        'for d in /sys/bus/usb/devices/*; do [ -f $d/idVendor ] && echo $(cat $d/idVendor):$(cat $d/idProduct); done',
      )
    ).out;
    expect(ids).toContain('0403:6001');
    expect((await qvmUsb('-l')).out).toMatch(new RegExp(`^${port} .*\\(attached to work\\)`, 'm'));

    expect(await qvmUsb('-d', port)).toMatchObject({ code: 0, err: '' });
    await until(
      'the adapter gone from work',
      async () => !(await inWork('cat /sys/bus/usb/devices/*/idVendor 2>/dev/null')).out.includes('0403'),
      30_000,
    );
    // Back in sys-usb, with its own driver again.
    await until('the adapter free in sys-usb', () => holderOf(adapter.port.portId, 'usb') === undefined, 10_000);
  });

  it('the host never had a block device, a mount or a udev entry for any of it', () => {
    sampleHost('at the end');
    expect(hostViolations).toEqual([]);
  });

  it('without devgated, the CLI reads sys-usb through its agent in-process, and attaches from it', async () => {
    await daemon?.stop();
    daemon = undefined;
    // Nobody listens there: the commands work in-process (not through another test's devgated).
    process.env.DEVGATE_SOCKET = path.join(dir, 'no-devgated.sock');
    const list = await qvmBlock('-l');
    expect(list).toMatchObject({ code: 0 });
    expect(list.out).toMatch(/^sys-usb:sda1 +QEMU_HARDDISK \(LABSTICK\) 31 MiB$/m);
    expect(await qvmBlock('-a', 'work', 'sys-usb:sda1')).toMatchObject({ code: 0, err: '' });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda')).toMatchObject({ code: 0 });
    // The command has ended; the export goes on in sys-usb, QEMU to QEMU.
    expect((await inWork('mount -o ro /dev/sda /mnt/stick && cat /mnt/stick/hello.txt; umount /mnt/stick')).out).toBe(
      'written before it went into sys-usb\n',
    );
    expect((await qvmBlock('-l')).out).toMatch(/^sys-usb:sda1 .*\(attached to 'work' as 'xvdi'\)$/m);
    expect(await qvmBlock('-d', 'work', 'sys-usb:sda1')).toMatchObject({ code: 0, err: '' });
    expect(await devgate('lab', 'wait', 'work', '/sys/class/block/sda', '--gone')).toMatchObject({ code: 0 });
  });

  it('usbvm remove --yes, after the warning, leaves the host as it was', async () => {
    const { pid } = readRegistrySync(registryFile).domains['sys-usb'];
    const refused = await devgate('usbvm', 'remove');
    expect(refused).toMatchObject({ code: 2, err: expect.stringContaining('attached directly to dom0') });
    const removed = await devgate('usbvm', 'remove', '--yes');
    expect(removed).toMatchObject({ code: 0, out: 'sys-usb removed\n' });
    expect(removed.err).toContain(
      'Warning: This procedure will result in your USB controller(s) being attached directly to dom0.',
    );
    expect(Object.keys(readRegistrySync(registryFile).domains)).toEqual(['work']);
    expect(fs.readdirSync(stateDir).filter((f) => f.startsWith('sys-usb'))).toEqual([]);
    const state = fs.existsSync(`/proc/${pid}/stat`) ? fs.readFileSync(`/proc/${pid}/stat`, 'utf8') : '';
    expect(state.replace(/^.*\) /, '').charAt(0)).toMatch(/^[ZX]?$/);
    expect(await devgate('usbvm', 'remove', '--yes')).toMatchObject({
      code: 1,
      err: expect.stringContaining("no such domain: 'sys-usb'"),
    });
    sampleHost('after remove');
    expect(hostViolations).toEqual([]);
  });
});
