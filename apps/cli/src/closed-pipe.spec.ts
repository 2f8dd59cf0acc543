import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

// `devgate list --json | head -c 200`: the reader goes away with most of the output unwritten. The
// CLI ends quietly, as coreutils do (status 141, as a shell reports a process SIGPIPE ended), and
// never with an EPIPE stack trace. These run the real launcher (bin/devgate.cjs, so the build) in
// a real process writing into a real pipe.
jest.setTimeout(30_000);

const BIN = path.join(__dirname, '..', 'bin', 'devgate.cjs');
let dir: string;
let recording: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-pipe-'));
  // A recorded disk with 300 partitions: `list --json` prints about 200 KB, far more than a pipe
  // holds (64 KiB), so the writer is still writing when `head` has gone.
  const disk = '/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda';
  const records = [
    `P: ${disk}\nN: sda\nE: DEVPATH=${disk}\nE: SUBSYSTEM=block\nE: DEVNAME=/dev/sda\nE: DEVTYPE=disk\nE: MAJOR=8\nE: MINOR=0\n`,
  ];
  for (let n = 1; n <= 300; n++) {
    const part = `${disk}/sda${n}`;
    records.push(
      `P: ${part}\nN: sda${n}\nE: DEVPATH=${part}\nE: SUBSYSTEM=block\nE: DEVNAME=/dev/sda${n}\n` +
        `E: DEVTYPE=partition\nE: PARTN=${n}\nE: MAJOR=259\nE: MINOR=${n}\n`,
    );
  }
  recording = path.join(dir, 'many-partitions.txt');
  fs.writeFileSync(recording, records.join('\n'));
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// No devgated: the socket named does not exist, so the full CLI runs in-process.
const env = () => ({ ...process.env, DEVGATE_SOCKET: path.join(dir, 'none.sock') });

function finished(child: ReturnType<typeof spawn>): Promise<{ code: number | null; signal: string | null }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}

it('ends quietly with 141 when the reader has closed the pipe before the first write', async () => {
  const child = spawn(process.execPath, [BIN, 'list', '--json', '--recording', recording], {
    env: env(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.destroy(); // the reader is gone before the CLI has even started
  let err = '';
  child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
  expect(await finished(child)).toEqual({ code: 141, signal: null });
  expect(err).toBe('');
});

it('devgate list --json | head -c 200: 200 bytes, nothing on stderr, the status coreutils give', async () => {
  const shell = spawn(
    'bash',
    [
      '-c',
      // PIPESTATUS: the writer's own status, as `set -o pipefail` would report it.
      '"$0" "$1" list --json --recording "$2" 2>"$3" | head -c 200 >"$4"; echo "${PIPESTATUS[0]}" >"$5"',
      process.execPath,
      BIN,
      recording,
      path.join(dir, 'stderr'),
      path.join(dir, 'stdout'),
      path.join(dir, 'status'),
    ],
    { env: env(), stdio: 'ignore' },
  );
  expect(await finished(shell)).toEqual({ code: 0, signal: null });
  expect(fs.readFileSync(path.join(dir, 'stdout'), 'utf8')).toMatch(/^\[\n {2}\{/);
  expect(fs.statSync(path.join(dir, 'stdout')).size).toBe(200);
  expect(fs.readFileSync(path.join(dir, 'stderr'), 'utf8')).toBe('');
  expect(fs.readFileSync(path.join(dir, 'status'), 'utf8')).toBe('141\n');
});
