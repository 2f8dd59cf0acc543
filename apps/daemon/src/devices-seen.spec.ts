/**
 * A driver package whose devices have port ids the state store refuses (`ttyS0@pnp0`) must not take
 * devgated down: the refused device is skipped and warned once per port, the others are recorded as
 * seen. devgated runs as a real process, so an uncaught exception would end it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SqliteStateStore } from '@devgate/service';
import { addDevice, loopStickRecord } from '@devgate/testkit';
import {
  ApiClient,
  DaemonProcess,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  until,
} from './testing/daemon-harness.js';

jest.setTimeout(60_000);
afterAll(() => cleanupHarness());

/**
 * A serial-port driver package. Its discovery starts empty and, once the file named by DEVGATE_TEST_GO exists (devgated is serving),
 * sends these snapshots 700 ms apart: the refused port comes, goes and comes back (noted twice),
 * and `ttyS2` comes last, as the mark that every earlier device was noted.
 */
const SERIAL_DRIVER = (go: string) => `
const device = (backend, portId) => ({
  port: { devclass: 'serial', backend, portId },
  deviceId: 'pnp0501-' + portId.replace(/[^A-Za-z0-9]/g, '_'),
  interfaces: [],
  data: {},
});
exports.devgateModule = {
  id: 'driver-serial',
  register: (registry) => registry.registerDriver({
    id: 'serial',
    manifest: { apiVersion: 1, description: 'serial ports' },
    discover: (source) => ({
      ['@@observable']() { return this; },
      subscribe(observer) {
        const [bad, good, mark] = ['ttyS0@pnp0', 'ttyS1', 'ttyS2'].map((p) => device(source.backend, p));
        const snapshots = [[bad, good], [good], [bad, good], [bad, good, mark]];
        observer.next([]);
        let timer = setInterval(() => {
          if (!require('node:fs').existsSync(${JSON.stringify(go)})) return;
          clearInterval(timer);
          observer.next(snapshots.shift());
          timer = setInterval(() => {
            if (snapshots.length > 0) observer.next(snapshots.shift());
            else clearInterval(timer);
          }, 700);
        }, 50);
        return { unsubscribe: () => clearInterval(timer) };
      },
    }),
  }),
};
`;

interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly device?: string;
  readonly code?: string;
}

/** devgated's pino lines so far. */
function logLines(daemon: DaemonProcess): LogLine[] {
  return daemon
    .log()
    .split('\n')
    .flatMap((line) => {
      try {
        return [JSON.parse(line) as LogLine];
      } catch {
        return [];
      }
    });
}

it('skips a device whose port id the store refuses, warns once for its port, and records the others', async () => {
  const dir = makeTempDir('devgated-seen-');
  const root = path.join(dir, 'node_modules', '@acme', 'serial');
  fs.mkdirSync(root, { recursive: true });
  fs.writeFileSync(path.join(root, 'package.json'), JSON.stringify({ name: '@acme/serial', main: 'index.js' }));
  const go = path.join(dir, 'go');
  fs.writeFileSync(path.join(root, 'index.js'), SERIAL_DRIVER(go));
  const config = harnessConfig(dir, { modules: [{ specifier: '@acme/serial', from: dir }] });
  const daemon = await DaemonProcess.start(config, { logLevel: 'info' });
  fs.writeFileSync(go, '');

  // Until the last burst is noted (or devgated is gone).
  const newDevices = () => logLines(daemon).filter((l) => l.msg === 'new device');
  await until(
    'dom0:ttyS2 to be noted',
    () => {
      if (!daemon.running) throw new Error(`devgated ended:\n${daemon.log()}`);
      return newDevices().some((l) => l.device === 'dom0:ttyS2');
    },
    20_000,
  );
  expect(daemon.running).toBe(true);
  expect(newDevices().map((l) => l.device)).toEqual(['dom0:ttyS1', 'dom0:ttyS2']);
  // Noted twice, refused twice, warned once, at warn (40).
  const refused = logLines(daemon).filter((l) => l.device === 'dom0:ttyS0@pnp0');
  expect(refused.map(({ level, code, msg }) => ({ level, code, msg }))).toEqual([
    { level: 40, code: 'DG_INVALID_STATE_VALUE', msg: 'device not recorded as seen: the state store refused it' },
  ]);
  // The refused device is still listed: only its record as seen is skipped.
  const listed = await new ApiClient(config.socket).get<{ devices: { portId: string }[] }>('/v1/devices?class=serial');
  expect(listed.body.devices.map((d) => d.portId).sort()).toEqual(['ttyS0@pnp0', 'ttyS1', 'ttyS2']);

  expect(await daemon.stop()).toEqual({ code: 0, signal: null });
  const store = new SqliteStateStore(path.join(config.stateDir, 'state.db'));
  try {
    expect(store.seen.get('serial', 'pnp0501-ttyS1')).toMatchObject({ backend: 'dom0', portId: 'ttyS1' });
    expect(store.seen.get('serial', 'pnp0501-ttyS2')).toMatchObject({ backend: 'dom0', portId: 'ttyS2' });
    expect(store.seen.get('serial', 'pnp0501-ttyS0_pnp0')).toBeUndefined();
  } finally {
    store.dispose();
  }
});

it('records the devices already there when it starts as seen', async () => {
  const dir = makeTempDir('devgated-seen-');
  const config = harnessConfig(dir);
  addDevice(path.join(dir, 'host'), loopStickRecord('loop7', { ID_MODEL: 'HostDisk' }));
  const daemon = await DaemonProcess.start(config, { logLevel: 'info' });
  await until(
    'dom0:loop7 noted',
    () => logLines(daemon).some((l) => l.msg === 'new device' && l.device === 'dom0:loop7'),
    20_000,
  );
  const listed = await new ApiClient(config.socket).get<{ devices: { portId: string; deviceId: string }[] }>(
    '/v1/devices?class=block&all=true',
  );
  const loop7 = listed.body.devices.find((d) => d.portId === 'loop7')!;
  expect(await daemon.stop()).toEqual({ code: 0, signal: null });
  const store = new SqliteStateStore(path.join(config.stateDir, 'state.db'));
  try {
    expect(store.seen.get('block', loop7.deviceId)).toMatchObject({ backend: 'dom0', portId: 'loop7' });
  } finally {
    store.dispose();
  }
});
