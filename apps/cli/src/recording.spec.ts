import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { recordedFixture, savedEnv } from '@devgate/testkit';
import { runCaptured } from './test-io';

// --recording replays a recorded machine: what a user sends with a bug report.
describe('devgate list --recording', () => {
  it('lists the USB stick and its partition of a recorded Raspberry Pi, linked to each other', async () => {
    const { code, out, err } = await runCaptured('devgate', [
      'list',
      '--json',
      '--recording',
      recordedFixture('KIOXIA_TransMemory.txt'),
      '--backend',
      'sys-usb',
    ]);
    expect(err).toBe('');
    expect(code).toBe(0);
    const devices = JSON.parse(out) as { port: string; class: string; parent: string | null; deviceId: string }[];
    const stick = devices.find((d) => d.class === 'usb')!;
    expect(stick.port).toBe('sys-usb:1-1.1.2');
    expect(stick.deviceId).toMatch(/^30de:6544:/);
    const sda = devices.find((d) => d.port === 'sys-usb:sda')!;
    expect(sda.parent).toBe('sys-usb:1-1.1.2');
    expect(sda.deviceId).toBe(`${stick.deviceId}:1.0`);
    expect(devices.find((d) => d.port === 'sys-usb:sda1')!.deviceId).toBe(`${stick.deviceId}:1.0:1`);
  });

  it('prints the seed’s qvm-block -l lines for a recorded desktop with a USB disk', async () => {
    const { code, out } = await runCaptured('qvm-block', [
      '-l',
      '--recording',
      recordedFixture('SHUTTLE_DH170_WITH_USB_DISK.txt'),
    ]);
    expect(code).toBe(0);
    expect(out).toMatch(/^dom0:sdc1 +.*\(.*\)$/m);
  });

  it('reads an lsblk sysfs tarball, with sizes', async () => {
    const { code, out } = await runCaptured('qvm-block', ['-l', '--recording', recordedFixture('simple-nvme.tar.xz')]);
    expect(code).toBe(0);
    expect(out).toMatch(/^dom0:nvme0n1p1 +.* \d+(\.\d)? [KMGT]iB$/m);
  });

  it('refuses an unreadable recording with a coded error', async () => {
    const { code, err } = await runCaptured('devgate', ['list', '--recording', '/nonexistent/file.umockdev']);
    expect(code).toBe(1);
    expect(err).toContain("cannot read recording '/nonexistent/file.umockdev'");
  });
});

describe('a listing creates nothing', () => {
  const env = savedEnv('DEVGATE_DOMAINS', 'DEVGATE_STATE_DIR');
  let dir: string;
  afterEach(() => {
    env.restore();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('neither a state store nor a lock file, with a registry of domains to take turns with', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-ro-'));
    // A registered domain (not running): commands take turns through the lock next to the registry.
    fs.writeFileSync(path.join(dir, 'domains.json'), JSON.stringify({ domains: { work: { qmp: `${dir}/work.qmp` } } }));
    process.env.DEVGATE_DOMAINS = path.join(dir, 'domains.json');
    process.env.DEVGATE_STATE_DIR = path.join(dir, 'state');
    const recording = recordedFixture('SHUTTLE_DH170_WITH_USB_DISK.txt');
    expect((await runCaptured('devgate', ['list', '--recording', recording])).code).toBe(0);
    expect((await runCaptured('qvm-block', ['list', '-s', '--recording', recording])).code).toBe(0);
    expect(fs.readdirSync(dir)).toEqual(['domains.json']);
  });
});
