import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { currentOwner, isGuestQemu, sweepStaleGuests } from './reaper';

// A test process that is killed outright (SIGKILL: no afterAll, no 'exit' hook) leaves no QEMU
// behind (setpriv --pdeathsig), and the next guest's start sweeps the directory it left.
jest.setTimeout(240_000);

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-lab-cleanup-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** Resolves once `check` holds, checking every 20 ms until the deadline. */
async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

it('kills the guest with its killed owner, and sweeps what it left on the next start', async () => {
  // The owner runs the built package, as any user of it would.
  const owner = spawn(
    process.execPath,
    [
      '-e',
      `require('reflect-metadata');
       require(${JSON.stringify(path.join(__dirname, '..', 'dist', 'index.js'))})
         .bootGuest({ name: 'doomed', devices: [{ kind: 'usb-storage' }] })
         .then((g) => console.log(JSON.stringify({ pid: g.pid, dir: g.dir })), (e) => { console.error(e); process.exit(1); });
       setInterval(() => {}, 1000);`,
    ],
    { env: { ...process.env, DEVGATE_LAB_RUN: root }, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: owner.stdout! }).once('line', resolve);
    owner.once('exit', (code) => reject(new Error(`the owner exited (${code}) before booting`)));
  });
  const { pid, dir } = JSON.parse(line) as { pid: number; dir: string };
  expect(path.dirname(dir)).toBe(root);
  expect(isGuestQemu(pid, dir)).toBe(true);
  expect(fs.readdirSync(dir)).toEqual(
    expect.arrayContaining(['agent.sock', 'lab.qmp', 'qmp.sock', 'owner.json', 'stick1.img']),
  );

  const ownerGone = new Promise((resolve) => owner.once('exit', resolve));
  owner.kill('SIGKILL');
  await ownerGone;
  await until(() => !isGuestQemu(pid, dir), 10_000, 'QEMU gone with its owner');

  // The directory is still there; the next start (or an explicit sweep) removes it. Directories
  // whose owner lives (this process's guests, other test processes') are left alone.
  const live = path.join(root, 'live-guest');
  fs.mkdirSync(live);
  fs.writeFileSync(path.join(live, 'owner.json'), JSON.stringify(currentOwner()));
  expect(fs.existsSync(dir)).toBe(true);
  expect(sweepStaleGuests(root)).toEqual([dir]);
  expect(fs.existsSync(dir)).toBe(false);
  expect(fs.existsSync(live)).toBe(true);
});
