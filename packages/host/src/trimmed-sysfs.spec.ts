import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { trimmedBlockDevices } from './trimmed-sysfs';

// A trimmed tree read in place (`--sysroot`) is anyone's. Real dumps: load-sysfs-tarball.spec.ts.
jest.setTimeout(30_000);
const REGISTER_TS = path.resolve(__dirname, '../../service/src/store/testing/register-ts.cjs');

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-trimmed-'));
  fs.mkdirSync(path.join(dir, 'sys/devices/virtual/block/sda'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'sys/block'));
  fs.symlinkSync('../devices/virtual/block/sda', path.join(dir, 'sys/block/sda'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

it('reads a `dev` that is not a regular file as absent, without waiting on it (a FIFO)', async () => {
  execFileSync('mkfifo', [path.join(dir, 'sys/devices/virtual/block/sda/dev')]);
  // In a child: opening a FIFO nobody writes blocks, and would block jest with it.
  const script = `
    const fs = require('node:fs');
    const { trimmedBlockDevices } = require(${JSON.stringify(path.join(__dirname, 'trimmed-sysfs.ts'))});
    const sys = process.argv[1];
    const devices = trimmedBlockDevices(sys, fs.realpathSync(sys + '/devices'));
    process.stdout.write(JSON.stringify([...devices.values()]));`;
  const child = spawn(
    process.execPath,
    ['--conditions=@devgate/source', '-r', REGISTER_TS, '-e', script, path.join(dir, 'sys')],
    { stdio: ['ignore', 'pipe', 'inherit'], timeout: 20_000 },
  );
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  const signal = await new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (_code, killedBy) => resolve(killedBy));
  });
  expect(signal).toBeNull();
  expect(JSON.parse(stdout)).toEqual([{ subsystem: 'block', properties: { DEVNAME: 'sda', DEVTYPE: 'disk' } }]);
});

it('reads a regular `dev`', () => {
  fs.writeFileSync(path.join(dir, 'sys/devices/virtual/block/sda/dev'), '8:0\n');
  const sys = path.join(dir, 'sys');
  const [sda] = trimmedBlockDevices(sys, fs.realpathSync(path.join(sys, 'devices'))).values();
  expect(sda.properties).toMatchObject({ MAJOR: '8', MINOR: '0', DEVNAME: 'sda' });
});
