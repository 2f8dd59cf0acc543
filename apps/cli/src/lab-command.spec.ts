import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCaptured } from './test-io';

// `devgate lab` reads the domain registry as devgated and the CLI's other commands do: it names the
// QEMU a `lab down` stops and the guest sockets `lab plug` connects to. No VM runs here: each
// command is refused before it would look for one.
let dir: string;
let registry: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-lab-command-'));
  registry = path.join(dir, 'domains.json');
  const domains = { work: { qmp: path.join(dir, 'work.qmp'), lab: true } };
  fs.writeFileSync(registry, JSON.stringify({ domains }), { mode: 0o644 });
  process.env.DEVGATE_DOMAINS = registry;
});

afterEach(() => {
  delete process.env.DEVGATE_DOMAINS;
  fs.rmSync(dir, { recursive: true, force: true });
});

const commands = [
  ['lab', 'down', 'work'],
  ['lab', 'down'],
  ['lab', 'plug', 'work', 'usb-kbd'],
  ['lab', 'unplug', 'work', 'kbd1'],
  ['lab', 'exec', 'work', '--', 'true'],
  ['lab', 'wait', 'work', '/'],
  ['lab', 'list'],
  ['lab', 'up', 'other'],
  ['lab', 'up', '--os', 'other'],
];

/** What each command says of the registry as it is now: each refusal, and the file left as it was. */
async function refusals(): Promise<string[]> {
  const before = fs.readFileSync(registry, 'utf8');
  const said: string[] = [];
  for (const argv of commands) {
    const { code, out, err } = await runCaptured('devgate', argv);
    expect({ argv, code, out }).toEqual({ argv, code: 1, out: '' });
    said.push(err);
  }
  expect(fs.readFileSync(registry, 'utf8')).toBe(before);
  return said;
}

it('refuses a registry others may write (0666) with the error the other commands give', async () => {
  fs.chmodSync(registry, 0o666);
  expect(await refusals()).toEqual(
    commands.map(
      () =>
        `devgate: error: ${registry}: the file is writable by other users (mode 0666)\n` +
        `devgate: hint: make it root's and writable by root alone, and its directory too (chown root; chmod go-w)\n`,
    ),
  );
});

it('refuses a registry owned by another user', async () => {
  fs.chownSync(registry, 4321, 4321);
  const uid = process.geteuid?.() ?? 0;
  for (const err of await refusals()) {
    expect(err).toContain(`devgate: error: ${registry}: the file is owned by uid 4321, neither root nor uid ${uid}\n`);
  }
});
