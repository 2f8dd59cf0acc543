import * as fs from 'node:fs';
import * as path from 'node:path';
import { type DriverReport } from '@devgate/core';
import { loadRecording } from '@devgate/host';
import { materializeHost, recordedFixture } from '@devgate/testkit';
import { checkConfig } from '@devgate/service';
import {
  ApiClient,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  startInProcess,
  until,
} from './testing/daemon-harness.js';

// devgated loading driver packages from its configuration: broken ones are refused (or isolated)
// with their coded errors, named by package, while every other class keeps working.
jest.setTimeout(60_000);
afterAll(() => cleanupHarness());

/** A driver package in DIR/node_modules/NAME whose main is `code` (plain CommonJS, no dependency). */
function writePackage(dir: string, name: string, code: string, version = '1.0.0'): void {
  const root = path.join(dir, 'node_modules', name);
  fs.mkdirSync(root, { recursive: true });
  fs.writeFileSync(path.join(root, 'package.json'), JSON.stringify({ name, version, main: 'index.js' }));
  fs.writeFileSync(path.join(root, 'index.js'), code);
}

const driver = (id: string, body: string, apiVersion = 1) =>
  `exports.devgateModule = { id: 'driver-${id}', register: (registry) => registry.registerDriver({
     id: '${id}', manifest: { apiVersion: ${apiVersion}, description: '${id}' }, ${body} }) };`;
// An rxjs-compatible observable without rxjs (a package brings its own, or gets the kernel's).
const erroring = `discover: () => ({ ['@@observable']() { return this; },
  subscribe(o) { const e = new Error('the adapter table is corrupt'); (o.error ? o.error.bind(o) : () => {})(e); return { unsubscribe() {} }; } })`;
const empty = `discover: () => ({ ['@@observable']() { return this; }, subscribe(o) { o.next([]); return { unsubscribe() {} }; } })`;

describe('devgated configuration: modules', () => {
  it('takes package names and paths, resolved from the file’s directory, with located errors', () => {
    const file = '/etc/devgate/devgated.json';
    const ok = checkConfig('{ "modules": ["@acme/devgate-driver-serial", "./drivers/x", "/opt/y"] }', file);
    expect(ok.config?.modules).toEqual([
      { specifier: '@acme/devgate-driver-serial', from: '/etc/devgate' },
      { specifier: './drivers/x', from: '/etc/devgate' },
      { specifier: '/opt/y', from: '/etc/devgate' },
    ]);
    const bad = checkConfig('{\n  "modules": ["Not A Name", 7, "@acme/x", "@acme/x"]\n}', file);
    expect(bad.issues.map((i) => `${i.line}:${i.column}: ${i.message}`)).toEqual([
      "2:15: modules: 'Not A Name' is not a package name (like @acme/devgate-driver-serial) or a path (./x, /x)",
      "2:29: modules: '7' is not a package name (like @acme/devgate-driver-serial) or a path (./x, /x)",
      "2:43: modules: '@acme/x' is named twice",
    ]);
    expect(checkConfig('{ "modules": "x" }', file).issues[0].message).toBe(
      'modules must be a list of driver packages: names or paths',
    );
  });
});

describe('devgated with broken driver packages', () => {
  it('refuses or isolates each with its coded error, and the other classes keep working', async () => {
    const dir = makeTempDir();
    writePackage(dir, '@acme/throws', "throw new Error('cannot find my firmware');");
    writePackage(dir, '@acme/future', driver('future', empty, 2));
    writePackage(dir, '@acme/impostor', driver('usb', empty));
    writePackage(dir, '@acme/flaky', driver('flaky', erroring));
    writePackage(dir, '@acme/good', driver('good', empty));
    // A real machine's USB devices on this host's tree, so a built-in class has something to list.
    const host = path.join(dir, 'host');
    materializeHost(loadRecording(recordedFixture('usbkbd.umockdev')).tree, host);
    const modules = ['@acme/throws', '@acme/future', '@acme/impostor', '@acme/flaky', '@acme/missing', '@acme/good'];
    const config = harnessConfig(dir, { modules: modules.map((specifier) => ({ specifier, from: dir })) });
    const daemon = await startInProcess(config);
    const client = new ApiClient(config.socket);

    const drivers = async () => (await client.get<{ drivers: DriverReport[] }>('/v1/drivers')).body.drivers;
    await until('the flaky driver is reported faulted', async () =>
      (await drivers()).some((d) => d.class === 'flaky' && d.health === 'faulted'),
    );
    const rows = Object.fromEntries((await drivers()).map((d) => [d.class ?? d.module, d]));
    expect(rows.block).toMatchObject({ origin: 'built-in', health: 'ok' });
    expect(rows.usb).toMatchObject({ module: 'driver-usb', origin: 'built-in', health: 'ok' });
    expect(rows.good).toMatchObject({ origin: 'package', package: '@acme/good@1.0.0', health: 'ok', error: null });
    expect(rows['@acme/throws'].error).toEqual({
      code: 'DG_MODULE_LOAD_FAILED',
      message: "driver package '@acme/throws' was not loaded: it threw while loading: cannot find my firmware",
    });
    expect(rows['driver-future']).toMatchObject({ health: 'refused', error: { code: 'DG_INCOMPATIBLE_DRIVER' } });
    expect(rows['driver-future'].error!.message).toBe(
      "package '@acme/future': driver 'future' targets plugin API 2, this kernel provides 1",
    );
    expect(rows['driver-usb']).toMatchObject({ health: 'refused', error: { code: 'DG_DUPLICATE_DRIVER' } });
    expect(rows['driver-usb'].error!.message).toContain("package '@acme/impostor'");
    expect(rows['@acme/missing']).toMatchObject({ health: 'refused', error: { code: 'DG_MODULE_NOT_FOUND' } });
    expect(rows.flaky).toMatchObject({ health: 'faulted', error: { code: 'DG_DRIVER_FAULT' } });
    expect(rows.flaky.error!.message).toBe(
      "driver 'flaky' failed on local:" + path.join(host, 'sys') + ': the adapter table is corrupt',
    );

    // The built-in USB driver still lists the keyboard's hubs and the keyboard, from this host.
    const usb = (await client.get<{ devices: { portId: string }[] }>('/v1/devices?class=usb')).body.devices;
    expect(usb.map((d) => d.portId)).toContain('1-1.5.4.2');
    // devgated's own health lists the fault as well.
    const health = (await client.get<{ faults: { driver: string }[] }>('/v1/health')).body;
    expect(health.faults.map((f) => f.driver)).toEqual(['flaky']);
    await daemon.stop();
  });
});
