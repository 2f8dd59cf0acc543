import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { callApi } from '@devgate/client';
import { type DriverReport } from '@devgate/core';
import { QmpClient, decodeQdevId, labDown, labUp } from '@devgate/backend-qemu';
import { RecordedDevice, isRecordedDevice, loadRecording } from '@devgate/host';
import { materializeHost } from '@devgate/testkit';
import { runCaptured } from './test-io';

// A third-party driver as its users get it: the example serial driver packed with npm and installed
// into a directory outside the workspace, named in devgated's configuration there, loaded by the
// real devgated binary, listed by the CLI (through devgated, and without it), and attached to a lab
// VM, where QEMU has its usb-serial device on a chardev of the port. The adapter's tty is this
// host's /dev/null under its name (char 1:3, found by number like any node): a real character device
// that QEMU's serial chardev opens as it would a /dev/ttyUSB0. (A pty cannot stand in: the kernel
// opens a pty only through its devpts mount, not through a node elsewhere.)
jest.setTimeout(240_000);

const exec = promisify(execFile);
const REPO = path.resolve(__dirname, '../../..');
const EXAMPLE = path.join(REPO, 'examples/driver-serial');
const DEVGATED = path.join(REPO, 'apps/daemon/bin/devgated.cjs');
const DEVGATE = path.join(REPO, 'apps/cli/bin/devgate.cjs');

let site: string;
/** /dev/null's numbers: the adapter's tty node in this host's tree. */
const NODE = { major: '1', minor: '3' };
let devgated: ChildProcess | undefined;
let devgatedLog = '';
const env = () => ({
  DEVGATE_SOCKET: path.join(site, 'run/devgate.sock'),
  DEVGATE_DOMAINS: path.join(site, 'domains.json'),
  DEVGATE_STATE_DIR: path.join(site, 'state'),
  DEVGATE_CONFIG: path.join(site, 'devgated.json'),
});

beforeAll(async () => {
  site = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-site-'));
  // The package as npm publishes it (its dist, built by the workspace's build), installed offline.
  if (!fs.existsSync(path.join(EXAMPLE, 'dist/serial-module.js'))) {
    execFileSync('npx', ['tsc', '--build', path.join(EXAMPLE, 'tsconfig.lib.json')], { cwd: REPO });
  }
  const packed = (await exec('npm', ['pack', '--silent', '--pack-destination', site], { cwd: EXAMPLE })).stdout.trim();
  fs.writeFileSync(path.join(site, 'package.json'), JSON.stringify({ name: 'devgate-site', private: true }));
  // Its peers (@devgate/core, rxjs) are devgated's own, given to it when it is loaded.
  await exec(
    'npm',
    ['install', '--offline', '--legacy-peer-deps', '--ignore-scripts', '--no-audit', '--no-fund', `./${packed}`],
    { cwd: site },
  );
  // A package written for a plugin API this devgated does not have: refused, the others run.
  const future = path.join(site, 'node_modules/@acme/devgate-driver-future');
  fs.mkdirSync(future, { recursive: true });
  fs.writeFileSync(
    path.join(future, 'package.json'),
    JSON.stringify({ name: '@acme/devgate-driver-future', version: '2.0.0' }),
  );
  fs.writeFileSync(
    path.join(future, 'index.js'),
    "exports.devgateModule = { id: 'driver-future', register: (r) => r.registerDriver({ id: 'future', manifest: { apiVersion: 2, description: 'x' }, discover: () => undefined }) };",
  );

  // This host: the adapters the example was written for, the FTDI one's tty on /dev/null's numbers.
  const { major, minor } = NODE;
  const records = loadRecording(path.join(EXAMPLE, 'fixtures/usb-serial-adapters.umockdev'))
    .tree.devices()
    .map((record) => {
      if (!record.devpath.endsWith('/tty/ttyUSB0') || !isRecordedDevice(record)) return record;
      const attributes = new Map(record.attributes).set('dev', `${major}:${minor}`);
      return new RecordedDevice({
        ...record,
        properties: { ...record.properties, MAJOR: major, MINOR: minor },
        attributes,
      });
    });
  const host = path.join(site, 'host');
  materializeHost(records, host);
  fs.rmSync(path.join(host, 'dev/ttyUSB0'));
  execFileSync('mknod', [path.join(host, 'dev/ttyUSB0'), 'c', major, minor]);

  await labUp(['work'], { registryFile: env().DEVGATE_DOMAINS, stateDir: path.join(site, 'lab') });
  fs.writeFileSync(
    env().DEVGATE_CONFIG,
    JSON.stringify({
      socket: env().DEVGATE_SOCKET,
      stateDir: env().DEVGATE_STATE_DIR,
      domains: env().DEVGATE_DOMAINS,
      backends: { dom0: { sysroot: host } },
      access: { users: [], groups: [] },
      libvirt: { defaultUri: false, uris: [] },
      modules: ['@devgate-examples/driver-serial', '@acme/devgate-driver-future'],
    }),
  );
  devgated = spawn(process.execPath, [DEVGATED, '--config', env().DEVGATE_CONFIG], {
    cwd: site,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DEVGATE_LOG_LEVEL: 'info' },
  });
  devgated.stdout!.on('data', (chunk: Buffer) => (devgatedLog += chunk.toString()));
  devgated.stderr!.on('data', (chunk: Buffer) => (devgatedLog += chunk.toString()));
  for (let i = 0; ; i++) {
    const up = await callApi(env().DEVGATE_SOCKET, 'GET', '/v1/health').then(
      () => true,
      () => false,
    );
    if (up) break;
    if (i > 300 || devgated.exitCode !== null) throw new Error(`devgated did not start:\n${devgatedLog}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  Object.assign(process.env, env());
});

afterAll(async () => {
  for (const key of Object.keys(env())) delete process.env[key];
  await stopDevgated();
  await labDown(undefined, { registryFile: path.join(site, 'domains.json') }).catch(() => undefined);
  fs.rmSync(site, { recursive: true, force: true });
});

async function stopDevgated(): Promise<void> {
  if (!devgated || devgated.exitCode !== null) return;
  const exited = new Promise((resolve) => devgated!.once('exit', resolve));
  process.kill(-devgated.pid!, 'SIGTERM');
  await exited;
}

/** The CLI as its own process, without devgated (its socket is elsewhere): in-process, on this host. */
async function cliAlone(args: string[]): Promise<string> {
  const childEnv = { ...process.env, ...env(), DEVGATE_SOCKET: path.join(site, 'no-devgated.sock') };
  const { stdout } = await exec(process.execPath, [DEVGATE, ...args], { env: childEnv, cwd: site });
  return stdout;
}

/** A command that must fail: its exit code and what it said. */
async function cliAloneFailing(args: string[]): Promise<{ code: number; stderr: string }> {
  const childEnv = { ...process.env, ...env(), DEVGATE_SOCKET: path.join(site, 'no-devgated.sock') };
  const failed = await exec(process.execPath, [DEVGATE, ...args], { env: childEnv, cwd: site }).then(
    () => undefined,
    (error: { code: number; stderr: string }) => ({ code: error.code, stderr: error.stderr }),
  );
  if (!failed) throw new Error(`devgate ${args.join(' ')} succeeded`);
  return failed;
}

describe('a driver package installed outside the workspace', () => {
  it('is loaded by devgated from its configuration, and listed with where it came from', async () => {
    const { drivers } = await callApi<{ drivers: DriverReport[] }>(env().DEVGATE_SOCKET, 'GET', '/v1/drivers');
    const serial = drivers.find((d) => d.class === 'serial');
    expect(serial).toEqual({
      class: 'serial',
      description: 'Serial ports: USB serial adapters, CDC ACM devices and UARTs',
      module: 'driver-serial',
      origin: 'package',
      package: '@devgate-examples/driver-serial@0.1.0',
      path: fs.realpathSync(path.join(site, 'node_modules/@devgate-examples/driver-serial/dist/serial-module.js')),
      health: 'ok',
      error: null,
    });
    const future = drivers.find((d) => d.module === 'driver-future');
    expect(future).toMatchObject({ health: 'refused', error: { code: 'DG_INCOMPATIBLE_DRIVER' } });
    expect(devgatedLog).toContain('driver package refused');

    const { out, code } = await runCaptured('devgate', ['drivers']);
    expect(code).toBe(0);
    expect(out).toMatch(
      /^serial +driver-serial +@devgate-examples\/driver-serial@0\.1\.0 \(\/.*serial-module\.js\) +ok$/m,
    );
    expect(out).toMatch(
      /^- +driver-future .* refused: DG_INCOMPATIBLE_DRIVER: package '@acme\/devgate-driver-future'/m,
    );
  });

  it('lists its class through devgated like any other, and the others keep working', async () => {
    const listed = await runCaptured('devgate', ['list', '--class', 'serial']);
    expect(listed.notices).toBe('');
    expect(listed.out.split('\n').slice(1, 4)).toEqual([
      expect.stringMatching(/^dom0:ttyACM0 +serial +Network: Arduino/),
      expect.stringMatching(/^dom0:ttyS0 +serial +\?\*{6}: unknown vendor UART ttyS0/),
      expect.stringMatching(/^dom0:ttyUSB0 +serial +uffffff: FTDI FT232R USB UART +-$/),
    ]);
    expect((await runCaptured('qvm-device', ['--list-device-classes'])).out.split('\n')).toContain('serial');
    expect((await runCaptured('devgate', ['list', '--class', 'usb'])).out).toMatch(/^dom0:1-2 +usb /m);
    // Assignments take any loaded class too.
    expect((await runCaptured('qvm-device', ['serial', 'assign', '--ask', 'work', 'dom0:ttyACM0'])).code).toBe(0);
    const assignments = JSON.parse((await runCaptured('devgate', ['assignments', '--class', 'serial', '--json'])).out);
    expect(assignments).toEqual([
      expect.objectContaining({
        devclass: 'serial',
        backend: 'dom0',
        portId: 'ttyACM0',
        frontend: 'work',
        mode: 'ask-to-attach',
      }),
    ]);
    expect((await runCaptured('qvm-device', ['serial', 'unassign', 'work', 'dom0:ttyACM0'])).code).toBe(0);
    const unknown = await runCaptured('devgate', ['list', '--class', 'future']);
    expect(unknown.code).toBe(2);
    expect(unknown.err).toContain("unknown device class 'future'");
  });

  it('attaches to a lab VM through the generic qemu-device kind: QEMU has usb-serial on the port', async () => {
    const attached = await runCaptured('qvm-device', ['serial', 'attach', 'work', 'dom0:ttyUSB0']);
    expect(attached.err).toBe('');
    expect(attached.code).toBe(0);
    expect((await runCaptured('devgate', ['serial', 'list'])).out).toMatch(
      /^dom0:ttyUSB0 .* work \(attached: model=usb-serial\)$/m,
    );
    const refused = await runCaptured('qvm-device', [
      'serial',
      'attach',
      '-o',
      'model=isa-serial',
      'work',
      'dom0:ttyACM0',
    ]);
    expect(refused.code).toBeGreaterThan(0);
    expect(refused.err).toContain('model option can only have usb-serial value');

    // QEMU serves one QMP client: what it has is read back once devgated let go of it.
    await stopDevgated();
    const registry = JSON.parse(fs.readFileSync(env().DEVGATE_DOMAINS, 'utf8')) as {
      domains: { work: { qmp: string } };
    };
    const qmp = await QmpClient.connect(registry.domains.work.qmp);
    try {
      const children = await qmp.execute<{ name: string; type: string }[]>('qom-list', { path: '/machine/peripheral' });
      const serial = children.filter((c) => c.type === 'child<usb-serial>');
      expect(serial).toHaveLength(1);
      expect(decodeQdevId(serial[0].name)).toMatchObject({ c: 'serial', b: 'dom0', p: 'ttyUSB0', k: 'qemu-device' });
      const chardev = await qmp.execute<string>('qom-get', {
        path: `/machine/peripheral/${serial[0].name}`,
        property: 'chardev',
      });
      const chardevs = await qmp.execute<{ label: string; filename: string }[]>('query-chardev');
      expect(chardevs).toContainEqual(expect.objectContaining({ label: chardev, filename: 'serial' }));
    } finally {
      qmp.destroy();
    }
  });

  it('is loaded by the CLI without devgated too, from the same configuration; detach leaves QEMU as it was', async () => {
    // Every command on this host's tree: in-process, the CLI reconciles what QEMU has with the devices
    // it sees, and the adapter is only in that tree.
    const host = ['--sysroot', path.join(site, 'host')];
    expect(await cliAlone(['drivers', ...host])).toMatch(
      /^serial +driver-serial +@devgate-examples\/driver-serial@0\.1\.0/m,
    );
    expect(await cliAlone(['list', '--class', 'serial', ...host])).toMatch(
      /^dom0:ttyUSB0 +serial +uffffff: FTDI FT232R USB UART +work \(attached: model=usb-serial\)$/m,
    );
    // The package's core is the bundled CLI's own, so its refusal is one of the CLI's coded errors (with
    // a core of its own it would be an error the kernel does not know: "internal error").
    const refused = await cliAloneFailing([
      'serial',
      'attach',
      '-o',
      'model=isa-serial',
      'work',
      'dom0:ttyACM0',
      ...host,
    ]);
    expect(refused).toEqual({ code: 1, stderr: 'devgate: error: model option can only have usb-serial value\n' });
    await cliAlone(['serial', 'detach', 'work', 'dom0:ttyUSB0', ...host]);
    expect(await cliAlone(['list', '--class', 'serial', ...host])).toMatch(/^dom0:ttyUSB0 .* -$/m);
    const registry = JSON.parse(fs.readFileSync(env().DEVGATE_DOMAINS, 'utf8')) as {
      domains: { work: { qmp: string } };
    };
    const qmp = await QmpClient.connect(registry.domains.work.qmp);
    try {
      const children = await qmp.execute<{ name: string; type: string }[]>('qom-list', { path: '/machine/peripheral' });
      expect(children.filter((c) => c.name.startsWith('dg-'))).toEqual([]);
      const chardevs = await qmp.execute<{ label: string }[]>('query-chardev');
      expect(chardevs.filter((c) => c.label.startsWith('dg-'))).toEqual([]);
    } finally {
      qmp.destroy();
    }
  });
});
