import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { runCaptured } from './test-io';

// Real loop devices on this host (root), read through /sys and probed with blkid.
afterAll(() => disposeAllLoopDisks());

describe('qvm-block on this host', () => {
  let disk: LoopDisk;
  beforeAll(() => {
    disk = createLoopDisk({ sizeMiB: 48, partitions: [{ sizeMiB: 30, label: 'Cruzer' }, {}] });
  });
  afterAll(() => disk.dispose());

  it('qvm-block -l prints the seed’s one-line format', async () => {
    const { code, out, err } = await runCaptured('qvm-block', ['-l']);
    expect(err).toBe('');
    expect(code).toBe(0);
    const line = out.split('\n').find((l) => l.startsWith(`dom0:${disk.partitions[0]} `));
    expect(line).toMatch(new RegExp(`^dom0:${disk.partitions[0]} +\\(Cruzer\\) 30 MiB$`));
    const whole = out.split('\n').find((l) => l.startsWith(`dom0:${disk.name} `));
    expect(whole).toMatch(new RegExp(` ${disk.image.replace(/[.]/g, '\\.')} 48 MiB$`));
  });

  it('qvm-block (no subcommand) and qvm-block list print Qubes 4.3 columns, header only on a TTY', async () => {
    const plain = await runCaptured('qvm-block', []);
    const listed = await runCaptured('qvm-block', ['ls']);
    expect(plain.out).toBe(listed.out);
    expect(plain.out).not.toContain('BACKEND:DEVID');
    const row = plain.out.split('\n').find((l) => l.startsWith(`dom0:${disk.partitions[0]} `));
    expect(row).toMatch(/^dom0:\S+ +Block_Storage: sub-device of dom0:loop\d+ \(Cruzer\)$/);
    const tty = await runCaptured('qvm-block', ['list'], true);
    expect(tty.out.split('\n')[0]).toMatch(/^BACKEND:DEVID +DESCRIPTION +USED BY$/);
    const ports = plain.out
      .trim()
      .split('\n')
      .map((l) => l.split(' ')[0]);
    expect(ports).toEqual([...ports].sort());
  });

  it('qvm-device block info shows the description, the device id and the data', async () => {
    const { code, out } = await runCaptured('qvm-device', ['block', 'info', `dom0:${disk.partitions[0]}`]);
    expect(code).toBe(0);
    expect(out).toContain(`device ID: 0000:0000::?******:${disk.name.slice(4)}:1`);
    expect(out).toContain('label: Cruzer');
    expect(out).toContain(`size: ${30 * 1024 * 1024}`);
  });

  it('devgate list --json lists the disk and partitions with their parent', async () => {
    const { code, out } = await runCaptured('devgate', ['list', '--class', 'block', '--json']);
    expect(code).toBe(0);
    const devices = JSON.parse(out) as { port: string; parent: string | null; data: Record<string, unknown> }[];
    const p2 = devices.find((d) => d.port === `dom0:${disk.partitions[1]}`)!;
    expect(p2.parent).toBe(`dom0:${disk.name}`);
    expect(p2.data.partition).toBe(2);
  });
});

describe('argument errors, as argparse reports them', () => {
  it('an unknown option is a usage error (exit 2)', async () => {
    const { code, err } = await runCaptured('qvm-block', ['list', '--bogus']);
    expect(code).toBe(2);
    expect(err).toMatch(/^usage: qvm-block /);
    expect(err).toMatch(/qvm-block: error: unknown option '--bogus'/);
  });

  it('--exclude without --all is refused with Qubes’ message', async () => {
    const { code, err } = await runCaptured('qvm-block', ['list', '--exclude', 'work']);
    expect(code).toBe(2);
    expect(err).toMatch(/\nqvm-block: error: --exclude can only be used with --all\n$/);
  });

  it('a malformed device argument is a usage error; an unknown device a runtime error', async () => {
    const bad = await runCaptured('qvm-block', ['info', 'sdb1']);
    expect(bad.code).toBe(2);
    expect(bad.err).toContain(
      'expected a backend vm, port id and [optional] device id combination like foo:bar[:baz] got sdb1',
    );
    const unknown = await runCaptured('qvm-block', ['info', 'dom0:sdz9']);
    expect(unknown.code).toBe(1);
    expect(unknown.err).toContain("qvm-block: error: backend vm dom0 doesn't expose block device 'sdz9'");
  });

  it('an unknown VM name is refused', async () => {
    const { code, err } = await runCaptured('qvm-block', ['list', 'nosuchvm']);
    expect(code).toBe(2);
    expect(err).toContain("no such domain: 'nosuchvm'");
  });

  it('an unknown device class is named with the known ones', async () => {
    const { code, err } = await runCaptured('qvm-device', ['floppy', 'list']);
    expect(code).toBe(2);
    expect(err).toContain("unknown device class 'floppy'");
    expect(err).toContain('known classes: block, usb');
  });

  it('--sysroot and --recording exclude each other; an unreadable sysroot is a coded runtime error', async () => {
    const both = await runCaptured('devgate', ['list', '--sysroot', '/x', '--recording', '/y']);
    expect(both.code).toBe(2);
    const missing = await runCaptured('devgate', ['list', '--sysroot', '/nonexistent-devgate-root']);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain("cannot read host tree '/nonexistent-devgate-root/sys'");
    expect(missing.err).toContain('hint:');
  });
});
