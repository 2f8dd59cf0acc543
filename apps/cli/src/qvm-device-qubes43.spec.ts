import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ApiError } from '@devgate/client';
import { Errors } from '@devgate/core';
import { recordedFixture, savedEnv } from '@devgate/testkit';
import { reportDaemonError } from './main.js';
import { captureIo, runCaptured } from './test-io.js';

// Qubes 4.3's qvm-device argument handling (shared/reference/qubes-devices.md 1.1 and 1.3), on a
// recorded machine read in-process, with no domain registered and no devgated: nothing is attached.
const KIOXIA = recordedFixture('KIOXIA_TransMemory.txt');
/** What the recording has in dom0:sda1 (a partition of the KIOXIA stick). */
const SDA1_ID = '30de:6544:0022CFF6BD70C670E32160AA:u080650:1.0:1';

const env = savedEnv('DEVGATE_DOMAINS', 'DEVGATE_SOCKET');
let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-qvm43-'));
  process.env.DEVGATE_DOMAINS = path.join(dir, 'domains.json');
  process.env.DEVGATE_SOCKET = path.join(dir, 'no-devgated.sock');
});
afterAll(() => {
  env.restore();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('an unknown VMNAME is a usage error (argparse), checked before the device', () => {
  const USAGE_THEN = (prog: string, message: string) =>
    new RegExp(`^usage: ${prog} .*\\n${prog}: error: ${message}\\n`);

  it.each([
    'attach nosuchvm dom0:sda1',
    'attach nosuchvm dom0:sdb1', // no such device either: the VM is named first
    'detach nosuchvm',
    'detach nosuchvm dom0:sda1',
  ])('qvm-block %s', async (line) => {
    const [command, ...rest] = line.split(' ');
    const { code, out, err } = await runCaptured('qvm-block', [command, '--recording', KIOXIA, ...rest]);
    expect({ code, out }).toEqual({ code: 2, out: '' });
    expect(err).toMatch(USAGE_THEN('qvm-block', "no such domain: 'nosuchvm'"));
  });

  it('devgated refusing the quick path’s attach is reported as the whole CLI reports it', async () => {
    const whole = await runCaptured('qvm-block', ['attach', '--recording', KIOXIA, 'nosuchvm', 'dom0:sda1']);
    const refusal = Errors.noConnector({ domain: 'nosuchvm' });
    const quick = captureIo();
    const code = reportDaemonError(
      'qvm-block',
      new ApiError(refusal.code, refusal.message, refusal.hint, 404),
      quick.io,
    );
    expect(code).toBe(2);
    expect({ code, err: quick.err() }).toEqual({ code: whole.code, err: whole.err });
  });
});

describe("argparse's messages, with nothing before them", () => {
  it('list with an unknown VM', async () => {
    const { code, err } = await runCaptured('qvm-block', ['list', '--recording', KIOXIA, 'nosuchvm']);
    expect(code).toBe(2);
    expect(err).toMatch(/\nqvm-block: error: no such domain: 'nosuchvm'\n$/);
  });

  it('--exclude without --all', async () => {
    const { code, err } = await runCaptured('qvm-block', ['list', '--recording', KIOXIA, '--exclude', 'work']);
    expect(code).toBe(2);
    expect(err).toMatch(/\nqvm-block: error: --exclude can only be used with --all\n$/);
  });

  it('qvm-device with no class', async () => {
    const { code, err } = await runCaptured('qvm-device', []);
    expect(code).toBe(2);
    expect(err).toMatch(/\nqvm-device: error: the following arguments are required: class\n$/);
  });
});

describe('--list-device-classes and its alias --list-classes, global options of every qvm-* tool', () => {
  it.each([
    ['qvm-device', '--list-classes'],
    ['qvm-block', '--list-device-classes'],
    ['qvm-block', '--list-classes'],
    ['qvm-pci', '--list-classes'],
  ] as const)('%s %s', async (prog, flag) => {
    const expected = await runCaptured('qvm-device', ['--list-device-classes']);
    expect(expected.out.split('\n')).toEqual(expect.arrayContaining(['block', 'usb', 'pci']));
    expect(await runCaptured(prog, [flag])).toMatchObject({ code: 0, out: expected.out, err: '' });
  });
});

describe('info', () => {
  it('prints the description alone, then the device ID and the data', async () => {
    const { code, out } = await runCaptured('qvm-block', ['info', '--recording', KIOXIA, 'dom0:sda1']);
    expect(code).toBe(0);
    expect(out.split('\n').slice(0, 2)).toEqual([
      'Block_Storage: sub-device of dom0:sda TransMemory (KIOXIA)',
      `device ID: ${SDA1_ID}`,
    ]);
    expect(out).toContain('\nlabel: KIOXIA\n');
  });

  it('takes the device ID that is in the port, and refuses any other (runtime error, exit 1)', async () => {
    const same = await runCaptured('qvm-block', ['info', '--recording', KIOXIA, `dom0:sda1:${SDA1_ID}`]);
    expect(same.code).toBe(0);
    expect(same.out).toContain(`device ID: ${SDA1_ID}\n`);

    const other = await runCaptured('qvm-block', ['info', '--recording', KIOXIA, 'dom0:sda1:xyz']);
    expect(other).toEqual({
      code: 1,
      out: '',
      err: 'qvm-block: error: this option works only for explicitly given port ID and does not support device ID\n',
      notices: '',
    });
  });
});
