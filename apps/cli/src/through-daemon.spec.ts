import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { labDown, labUp } from '@devgate/backend-qemu';
import { Devgated } from '@devgate/daemon';
import { defaultConfig } from '@devgate/service';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { quick } from './quick';
import { runCaptured } from './test-io';

// The CLI as devgated's client: the same commands, with assignments, asks and the audit log.
const execFileAsync = promisify(execFile);
jest.setTimeout(60_000);

let dir: string;
let daemon: Devgated;
let disk: LoopDisk;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-client-'));
  const domains = path.join(dir, 'domains.json');
  await labUp(['work'], { registryFile: domains, stateDir: path.join(dir, 'lab') });
  disk = createLoopDisk({ sizeMiB: 16, partitions: [{ label: 'CLIENT' }] });
  const socket = path.join(dir, 'devgate.sock');
  process.env.DEVGATE_SOCKET = socket;
  process.env.DEVGATE_DOMAINS = domains;
  daemon = await Devgated.start(
    { ...defaultConfig(), socket, stateDir: path.join(dir, 'state'), domains, access: { users: [], groups: [] } },
    pino({ level: 'silent' }),
  );
  // The label arrives from a background probe.
  for (let i = 0; i < 100; i++) {
    const found = daemon.manager.list().find((d) => d.port.portId === disk.partitions[0]);
    if (found?.data.label) break;
    await new Promise((r) => setTimeout(r, 20));
  }
});

afterAll(async () => {
  await daemon?.stop();
  delete process.env.DEVGATE_SOCKET;
  await labDown(undefined, { registryFile: process.env.DEVGATE_DOMAINS });
  delete process.env.DEVGATE_DOMAINS;
  disposeAllLoopDisks();
  fs.rmSync(dir, { recursive: true, force: true });
});

const p1 = () => `dom0:${disk.partitions[0]}`;

describe('the CLI through devgated', () => {
  it('lists through the daemon, without the in-process notice', async () => {
    const listed = await runCaptured('qvm-block', ['-l']);
    expect(listed.notices).toBe('');
    expect(listed.out).toMatch(new RegExp(`^${p1()} +\\(CLIENT\\) \\d+ MiB$`, 'm'));
  });

  // The built launchers, as users run them: dist/bundle/quick.js, then the bundle if it declines.
  const bin = (name: string, args: readonly string[]) =>
    execFileAsync(process.execPath, [path.join(__dirname, '..', 'bin', `${name}.cjs`), ...args], {
      env: process.env,
    }).then(
      (r) => ({ code: 0, out: r.stdout, err: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout, err: e.stderr }),
    );
  const holder = () => daemon.manager.list().find((d) => d.port.portId === disk.partitions[0])?.attachment?.frontend;

  it("the bins' quick path answers from devgated as the whole CLI does", async () => {
    for (const [name, args] of [
      ['qvm-block', ['-l']],
      ['devgate', ['list', '--json']],
    ] as const) {
      const whole = await runCaptured(name, [...args]);
      expect((await bin(name, args)).out).toBe(whole.out);
    }
    expect((await bin('qvm-block', ['-l'])).out).toMatch(new RegExp(`^${p1()} +\\(CLIENT\\) \\d+ MiB$`, 'm'));
  });

  it("the bins' quick path attaches and detaches, and reports devgated's refusals as the whole CLI does", async () => {
    expect(await bin('qvm-block', ['attach', 'work', p1()])).toEqual({ code: 0, out: '', err: '' });
    expect(holder()).toBe('work');
    // Refused (already attached; not a device; no such domain): the same words and exit code.
    for (const args of [
      ['attach', 'work', p1()],
      ['a', 'work', 'nonsense'],
      ['attach', 'nosuchvm', p1()],
    ]) {
      const whole = await runCaptured('qvm-block', args);
      expect(whole.code).not.toBe(0);
      expect(await bin('qvm-block', args)).toEqual({ code: whole.code, out: '', err: whole.err });
    }
    expect(holder()).toBe('work');
    expect(await bin('qvm-block', ['detach', 'work', p1()])).toEqual({ code: 0, out: '', err: '' });
    expect(holder()).toBeUndefined();
    // Done by the quick path itself: the whole CLI is not loaded when devgated says yes.
    const wholeCli = () => {
      throw new Error('the whole CLI was loaded');
    };
    await expect(quick('qvm-block', ['at', 'work', p1()], wholeCli)).resolves.toBe(true);
    expect(holder()).toBe('work');
    await expect(quick('qvm-block', ['dt', 'work'], wholeCli)).resolves.toBe(true);
    expect(holder()).toBeUndefined();
    // With an option, it is the whole CLI's.
    await expect(quick('qvm-block', ['attach', '--ro', 'work', p1()], wholeCli)).resolves.toBe(false);
  });

  it('assigns and shows the assignment as Qubes does (list -s), then unassigns', async () => {
    const assigned = await runCaptured('qvm-block', ['assign', '--ask', 'work', p1()]);
    expect(assigned.err).toBe('');
    expect(assigned.code).toBe(0);
    const listed = await runCaptured('qvm-block', ['list', '-s']);
    expect(listed.out).toMatch(new RegExp(`^${p1()} .*\\*work \\(ask-to-attach\\)$`, 'm'));

    // The ask that the assignment raised, answered from the CLI.
    let asks = '';
    for (let i = 0; i < 100 && !asks.includes(p1()); i++) {
      asks = (await runCaptured('devgate', ['ask', 'list'])).out;
      await new Promise((r) => setTimeout(r, 20));
    }
    const id = asks
      .split('\n')
      .find((l) => l.includes(p1()))!
      .split(/\s+/)[0];
    expect((await runCaptured('devgate', ['ask', 'answer', id, 'deny'])).code).toBe(0);
    expect((await runCaptured('qvm-block', ['list'])).out).not.toMatch(/work \(attached/);

    expect((await runCaptured('qvm-block', ['unassign', 'work', p1()])).code).toBe(0);
    expect((await runCaptured('qvm-block', ['list', '-s'])).out).not.toContain('*work');
    const again = await runCaptured('qvm-block', ['unassign', 'work', p1()]);
    expect(again.code).toBe(1);
    expect(again.err).toContain('is not assigned to work');
  });

  it('refuses USB as required, as Qubes does', async () => {
    const result = await runCaptured('qvm-usb', ['assign', '--required', 'work', 'dom0:1-1']);
    expect(result.code).toBe(1);
    expect(result.err).toContain('Only pci and block devices can be assigned as required.');
  });

  it('attaches and detaches through the daemon, and devgate audit shows both with who and why', async () => {
    expect((await runCaptured('qvm-block', ['attach', 'work', p1()])).code).toBe(0);
    expect((await runCaptured('qvm-block', ['-l'])).out).toMatch(/\(attached to 'work' as 'xvdi'\)/);
    expect((await runCaptured('qvm-block', ['-d', p1()])).code).toBe(0);
    const audit = await runCaptured('devgate', ['audit', '--frontend', 'work', '--limit', '5']);
    expect(audit.out.split('\n')[0]).toMatch(/^TIME +WHO +ACTION +DEVICE +FRONTEND +OUTCOME +WHY$/);
    expect(audit.out).toMatch(new RegExp(`uid=0\\(root\\) via devgate\\.sock\\.rw +detach +${p1()} +work +ok`));
    expect(audit.out).toMatch(new RegExp(`attach +${p1()} +work +ok`));
    const json = JSON.parse((await runCaptured('devgate', ['audit', '--json', '--action', 'answer'])).out);
    expect(json[0]).toMatchObject({ action: 'answer', outcome: 'denied', frontend: 'work' });
  });

  it('devgate config check reports located errors', async () => {
    const bad = path.join(dir, 'bad.json');
    fs.writeFileSync(bad, '{\n  "socket": 5,\n  "colour": "red"\n}\n');
    const result = await runCaptured('devgate', ['config', 'check', bad]);
    expect(result.code).toBe(1);
    expect(result.err).toContain(`${bad}:2:13: socket must be a non-empty string`);
    expect(result.err).toContain(`${bad}:3:3: unknown setting 'colour'`);
    const good = path.join(dir, 'good.json');
    fs.writeFileSync(good, '{ "askTimeoutSeconds": 30 }');
    expect((await runCaptured('devgate', ['config', 'check', good])).out).toBe(`${good}: ok\n`);
  });
});

describe('without devgated', () => {
  it('works in-process, says so, and refuses what needs the daemon', async () => {
    const socket = process.env.DEVGATE_SOCKET;
    process.env.DEVGATE_SOCKET = path.join(dir, 'nobody-here.sock');
    try {
      const listed = await runCaptured('qvm-block', ['list']);
      expect(listed.code).toBe(0);
      expect(listed.notices).toContain('devgated is not running');
      const assign = await runCaptured('qvm-block', ['assign', 'work', p1()]);
      expect(assign.code).toBe(1);
      expect(assign.err).toContain('devgated is not reachable');
    } finally {
      process.env.DEVGATE_SOCKET = socket;
    }
  });
});
