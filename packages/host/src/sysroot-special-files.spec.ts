import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LOCAL_ROOTS, readUsageFiles, rootsUnder, sysfsReader } from './sysfs-reader';

// The child's own deadline (20 s) fails a reader that blocks, not jest's.
jest.setTimeout(30_000);

// A --sysroot tree is anyone's: where an attribute, a uevent file or /proc/self/mountinfo should be,
// it may hold a FIFO (an open or read that waits for a writer forever) or a device node (/dev/zero:
// a read without end). Needs root, for mknod.
const root = process.getuid?.() === 0;
(root ? describe : describe.skip)('a --sysroot tree holding FIFOs and device nodes', () => {
  let work: string;
  let tree: string;
  beforeEach(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-special-files-'));
    tree = path.join(work, 'root');
    const sys = path.join(tree, 'sys');
    const fifo = (file: string) => execFileSync('mkfifo', [file]);
    const zero = (file: string) => execFileSync('mknod', [file, 'c', '1', '5']); // /dev/zero
    const device = (name: string, uevent: (file: string) => void) => {
      const dir = path.join(sys, 'devices/virtual/block', name);
      fs.mkdirSync(dir, { recursive: true });
      uevent(path.join(dir, 'uevent'));
      fs.symlinkSync(`../../devices/virtual/block/${name}`, path.join(sys, 'class/block', name));
      return dir;
    };
    fs.mkdirSync(path.join(sys, 'class/block'), { recursive: true });
    const good = device('good0', (file) => fs.writeFileSync(file, 'MAJOR=7\nMINOR=0\nDEVNAME=good0\nDEVTYPE=disk\n'));
    fs.writeFileSync(path.join(good, 'size'), '2048\n');
    fifo(path.join(good, 'ro'));
    zero(path.join(good, 'removable'));
    device('fifo0', fifo);
    device('zero0', zero);
    fs.mkdirSync(path.join(tree, 'proc/self'), { recursive: true });
    zero(path.join(tree, 'proc/self/mountinfo'));
    fifo(path.join(tree, 'proc/swaps'));
  });
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  const REGISTER_TS = path.resolve(__dirname, '../../service/src/store/testing/register-ts.cjs');

  /**
   * Reads the tree in a child node with a deadline, so a reader that blocks fails the test instead of
   * jest; its address space is bounded (so an unbounded read cannot take the machine) and it reports
   * its peak memory, which an unbounded read that ends in a caught allocation failure still shows.
   */
  function readInChild(): Promise<{ signal: NodeJS.Signals | null; result?: ChildResult; stderr: string }> {
    const script = `
      const { readHostTree, rootsUnder, sysfsReader, readUsageFiles } = require(${JSON.stringify(path.join(__dirname, 'sysfs-reader.ts'))});
      const roots = rootsUnder(process.argv[1]);
      const tree = readHostTree(roots);
      const names = ['size', 'ro', 'removable'];
      const devices = Object.fromEntries(tree.devices().map((r) => [r.devpath, {
        properties: r.properties,
        attributes: Object.fromEntries(names.map((n) => [n, r.attribute(n) ?? null])),
      }]));
      const reader = sysfsReader(roots);
      const direct = Object.fromEntries(names.map((n) => [n, reader.attribute('/devices/virtual/block/good0', n) ?? null]));
      const usage = readUsageFiles(roots);
      process.stdout.write(JSON.stringify({ devices, direct, usage, maxRssKiB: process.resourceUsage().maxRSS }));`;
    const args = ['--conditions=@devgate/source', '-r', REGISTER_TS, '-e', script, tree];
    return new Promise((resolve, reject) => {
      const child = spawn('sh', ['-c', 'ulimit -v 3000000; exec "$0" "$@"', process.execPath, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 20_000,
        killSignal: 'SIGKILL',
      });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
      child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr = (stderr + text).slice(-2000)));
      child.once('error', reject);
      child.once('close', (_code, signal) =>
        resolve({ signal, result: stdout ? JSON.parse(stdout) : undefined, stderr }),
      );
    });
  }

  interface ChildResult {
    devices: Record<string, { properties: Record<string, string>; attributes: Record<string, string | null> }>;
    direct: Record<string, string | null>;
    usage: { mountinfo: string; swaps: string };
    maxRssKiB: number;
  }

  it('reads regular files only: a FIFO or a device node reads as nothing, without blocking or reading without end', async () => {
    const { signal, result, stderr } = await readInChild();
    expect({ signal, stderr: result ? '' : stderr }).toEqual({ signal: null, stderr: '' });
    const { devices, direct, usage, maxRssKiB } = result!;
    // The regular files beside them are read as ever.
    expect(devices['/devices/virtual/block/good0']).toEqual({
      properties: expect.objectContaining({ DEVNAME: '/dev/good0', MAJOR: '7', SUBSYSTEM: 'block' }),
      attributes: { size: '2048', ro: null, removable: null },
    });
    expect(direct).toEqual({ size: '2048', ro: null, removable: null });
    // A uevent file that is a FIFO or /dev/zero: a device with no properties of its own.
    for (const name of ['fifo0', 'zero0']) {
      expect(devices[`/devices/virtual/block/${name}`].properties).toEqual({ SUBSYSTEM: 'block' });
    }
    expect(usage).toEqual({ mountinfo: '', swaps: '' });
    // Nothing here is larger than a few KiB: an unbounded read of /dev/zero shows as hundreds of MiB.
    expect(maxRssKiB).toBeLessThan(400 * 1024);
  });

  it('reads a mountinfo larger than one buffer whole, and bounds it by bytes read', () => {
    const line = (i: number) => `${i} 1 0:${i} / /mnt/m${i} rw,relatime shared:1 - tmpfs tmpfs rw\n`;
    // Regular files only here: this test reads in-process.
    const mountinfo = path.join(tree, 'proc/self/mountinfo');
    fs.rmSync(mountinfo);
    fs.rmSync(path.join(tree, 'proc/swaps'));
    const text = Array.from({ length: 3000 }, (_, i) => line(i)).join('');
    fs.writeFileSync(mountinfo, text);
    expect(text.length).toBeGreaterThan(64 * 1024);
    expect(readUsageFiles(rootsUnder(tree)).mountinfo).toBe(text);

    fs.writeFileSync(mountinfo, Buffer.alloc(17 * 1024 * 1024, 'x'));
    expect(readUsageFiles(rootsUnder(tree)).mountinfo.length).toBe(16 * 1024 * 1024);
  });
});

// The real /sys and /proc: sysfs attributes report S_IFREG and size 4096, procfs files S_IFREG and
// size 0; both must still be read in full.
describe('this host', () => {
  it('reads a sysfs attribute and /proc/self/mountinfo', () => {
    const reader = sysfsReader(LOCAL_ROOTS);
    const block = reader.entries('class/block')[0];
    if (block !== undefined) {
      const devpath = '/' + path.relative('/sys', fs.realpathSync(path.join('/sys/class/block', block)));
      expect(reader.attribute(devpath, 'size')).toMatch(/^\d+$/);
      expect(reader.attribute(devpath, 'uevent')).toContain(`DEVNAME=${block}`);
    }
    const { mountinfo } = readUsageFiles(LOCAL_ROOTS);
    expect(mountinfo).toBe(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
  });
});
