import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { labDown, labUp } from '@devgate/backend-qemu';
import { Devgated } from '@devgate/daemon';
import { defaultConfig } from '@devgate/service';
import { type LoopDisk, createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { runCaptured } from './test-io';

// devgate deny / answers / assignments through a running devgated: a real loop device, a real
// (paused) QEMU VM, and the daemon's API underneath.
jest.setTimeout(60_000);

let dir: string;
let daemon: Devgated;
let disk: LoopDisk;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-policy-cli-'));
  const domains = path.join(dir, 'domains.json');
  await labUp(['work'], { registryFile: domains, stateDir: path.join(dir, 'lab') });
  disk = createLoopDisk({ sizeMiB: 8 });
  const socket = path.join(dir, 'devgate.sock');
  process.env.DEVGATE_SOCKET = socket;
  process.env.DEVGATE_DOMAINS = domains;
  daemon = await Devgated.start(
    { ...defaultConfig(), socket, stateDir: path.join(dir, 'state'), domains, access: { users: [], groups: [] } },
    pino({ level: 'silent' }),
  );
  for (let i = 0; i < 100 && !daemon.manager.list().some((d) => d.port.portId === disk.name); i++) {
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

const device = () => `dom0:${disk.name}`;

describe('devgate deny', () => {
  it('adds, lists, removes and sets patterns; an added pattern stops a manual attach until it is removed', async () => {
    expect(await runCaptured('devgate', ['deny', 'add', 'work', 'u03****', 'b******', 'u03****'])).toMatchObject({
      code: 0,
      out: '',
      err: '',
    });
    const listed = await runCaptured('devgate', ['deny', 'list']);
    expect(listed.out).toBe('VM    PATTERN  CATEGORY\n' + 'work  b******  Block_Storage\n' + 'work  u03****  Input\n');
    expect(JSON.parse((await runCaptured('devgate', ['deny', 'list', 'work', '--json'])).out)).toEqual({
      frontend: 'work',
      patterns: ['b******', 'u03****'],
    });

    const refused = await runCaptured('qvm-block', ['attach', 'work', device()]);
    expect(refused.code).toBe(1);
    expect(refused.err).toContain(`Attaching ${device()} to work is denied: its interfaces are on work's deny list`);
    const audit = JSON.parse((await runCaptured('devgate', ['audit', '--json', '--frontend', 'work'])).out);
    expect(audit[0]).toMatchObject({ action: 'attach', outcome: 'denied', code: 'DG_POLICY_DENIED' });
    expect(audit[1]).toMatchObject({ action: 'deny-list', outcome: 'ok', actor: 'uid=0(root) via devgate.sock.rw' });

    expect((await runCaptured('devgate', ['deny', 'remove', 'work', 'b******', 'p0c03**'])).code).toBe(0);
    expect((await runCaptured('devgate', ['deny', 'list', 'work'])).out).toBe(
      'VM    PATTERN  CATEGORY\nwork  u03****  Input\n',
    );
    expect((await runCaptured('qvm-block', ['attach', 'work', device()])).code).toBe(0);
    expect((await runCaptured('qvm-block', ['detach', 'work', device()])).code).toBe(0);

    expect((await runCaptured('devgate', ['deny', 'set', 'work', 'u08****', 'm******'])).code).toBe(0);
    expect(JSON.parse((await runCaptured('devgate', ['deny', 'list', '--json'])).out)).toEqual([
      { frontend: 'work', patterns: ['m******', 'u08****'] },
    ]);
    expect((await runCaptured('devgate', ['deny', 'set', 'work'])).code).toBe(0);
    expect((await runCaptured('devgate', ['deny', 'list'])).out).toBe('VM  PATTERN  CATEGORY\n');
  });

  it("refuses a malformed pattern with Qubes' wording, and warns about a VM devgated does not know", async () => {
    const bad = await runCaptured('devgate', ['deny', 'add', 'work', 'U03****']);
    expect(bad.code).toBe(2);
    expect(bad.err).toContain("invalid interface code 'U03****': interface code list should be in the form");
    const badVm = await runCaptured('devgate', ['deny', 'add', 'wo rk', 'u03****']);
    expect(badVm.code).toBe(2);
    expect(badVm.err).toContain("invalid domain name 'wo rk'");
    const typo = await runCaptured('devgate', ['deny', 'add', 'wrok', 'u03****']);
    expect(typo).toMatchObject({ code: 0, out: '' });
    expect(typo.err).toBe("Warning: devgated knows no domain 'wrok'; the deny list applies to it once it does.\n");
    expect((await runCaptured('devgate', ['deny', 'set', 'wrok'])).err).toBe('');
    expect((await runCaptured('devgate', ['deny', 'list', '--json'])).out).toBe('[]\n');
  });
});

describe('devgate answers and devgate assignments', () => {
  it('list a remembered answer and an assignment, and forget the answer by id, by VM and with --all', async () => {
    // An ask-to-attach assignment raises an ask; a remembered "deny" answers it for good.
    expect((await runCaptured('qvm-block', ['assign', '--ask', 'work', device()])).code).toBe(0);
    const assignments = await runCaptured('devgate', ['assignments']);
    expect(assignments.out).toMatch(
      new RegExp(
        `^CLASS +DEVICE +DEVICE ID +FRONTEND +MODE +OPTIONS\nblock +${device()} +\\S+ +work +ask-to-attach\n$`,
      ),
    );
    expect(JSON.parse((await runCaptured('devgate', ['assignments', '--class', 'usb', '--json'])).out)).toEqual([]);

    let id = '';
    for (let i = 0; i < 100 && !id; i++) {
      const asks = (await runCaptured('devgate', ['ask', 'list'])).out.split('\n');
      id = asks.find((line) => line.includes(device()))?.split(/\s+/)[0] ?? '';
      if (!id) await new Promise((r) => setTimeout(r, 20));
    }
    expect(id).not.toBe('');
    expect((await runCaptured('devgate', ['ask', 'answer', id, 'deny', '--remember'])).code).toBe(0);

    const listed = await runCaptured('devgate', ['answers', 'list']);
    const [header, row] = listed.out.split('\n');
    expect(header).toMatch(/^ID +CLASS +DEVICE +DEVICE ID +FRONTEND +VERDICT +SINCE +EXPIRES$/);
    expect(row).toMatch(/^[0-9a-f]{12} +block +dom0:\* +\S+ +work +deny +\S+Z +never$/);
    const [answer] = JSON.parse(
      (await runCaptured('devgate', ['answers', 'list', '--frontend', 'work', '--json'])).out,
    );
    expect(answer).toMatchObject({
      devclass: 'block',
      backend: 'dom0',
      portId: '*',
      frontend: 'work',
      verdict: 'deny',
    });
    expect(row.startsWith(answer.id)).toBe(true);
    expect(JSON.parse((await runCaptured('devgate', ['answers', 'list', '--class', 'usb', '--json'])).out)).toEqual([]);

    expect(await runCaptured('devgate', ['answers', 'forget', answer.id])).toMatchObject({
      code: 0,
      out: 'Forgot 1 remembered answer.\n',
    });
    const again = await runCaptured('devgate', ['answers', 'forget', answer.id]);
    expect(again.code).toBe(1);
    expect(again.err).toContain(`no remembered answer '${answer.id}'`);
    expect((await runCaptured('devgate', ['answers', 'list'])).out.split('\n').filter(Boolean)).toHaveLength(1);

    const remember = (frontend: string, devclass: string) =>
      daemon.store.answers.remember({
        devclass,
        backend: 'dom0',
        portId: '*',
        deviceId: 'x',
        frontend,
        verdict: 'allow',
      });
    remember('work', 'block');
    remember('work', 'usb');
    remember('personal', 'usb');
    expect((await runCaptured('devgate', ['answers', 'forget', '--frontend', 'work', '--class', 'usb'])).out).toBe(
      'Forgot 1 remembered answer.\n',
    );
    expect((await runCaptured('devgate', ['answers', 'forget', '--all'])).out).toBe('Forgot 2 remembered answers.\n');
    const audit = JSON.parse((await runCaptured('devgate', ['audit', '--json', '--action', 'answer'])).out);
    expect(audit.slice(0, 4).map((e: { reason: string }) => e.reason)).toEqual([
      "forgot the remembered answer 'allow'",
      "forgot the remembered answer 'allow'",
      "forgot the remembered answer 'allow'",
      "forgot the remembered answer 'deny'",
    ]);

    expect((await runCaptured('qvm-block', ['unassign', 'work', device()])).code).toBe(0);
    expect((await runCaptured('devgate', ['assignments'])).out).toBe(
      'CLASS  DEVICE  DEVICE ID  FRONTEND  MODE  OPTIONS\n',
    );
  });

  it('refuse a forget that does not say what to forget', async () => {
    for (const args of [[], ['abc', '--all'], ['--all', '--frontend', 'work'], ['0123456789ab', '--class', 'usb']]) {
      const result = await runCaptured('devgate', ['answers', 'forget', ...args]);
      expect({ args, code: result.code }).toEqual({ args, code: 2 });
      expect(result.err).toContain('say what to forget');
    }
    const notAnId = await runCaptured('devgate', ['answers', 'forget', 'nonsense']);
    expect(notAnId.code).toBe(1);
    expect(notAnId.err).toContain("no remembered answer 'nonsense'");
  });
});

describe('without devgated', () => {
  it('every one of these commands refuses with DG_DAEMON_UNAVAILABLE', async () => {
    const socket = process.env.DEVGATE_SOCKET;
    process.env.DEVGATE_SOCKET = path.join(dir, 'nobody-here.sock');
    try {
      for (const args of [
        ['deny', 'list'],
        ['deny', 'add', 'work', 'u03****'],
        ['deny', 'remove', 'work', 'u03****'],
        ['deny', 'set', 'work'],
        ['answers', 'list'],
        ['answers', 'forget', '--all'],
        ['assignments'],
      ]) {
        const result = await runCaptured('devgate', args);
        expect({ args, code: result.code }).toEqual({ args, code: 1 });
        expect(result.err).toContain('devgated is not reachable');
        expect(result.err).toContain('this needs devgated');
      }
      // A usage error stays one.
      expect((await runCaptured('devgate', ['deny', 'add', 'work', 'U03****'])).code).toBe(2);
      expect((await runCaptured('devgate', ['answers', 'forget'])).code).toBe(2);
    } finally {
      process.env.DEVGATE_SOCKET = socket;
    }
  });
});
