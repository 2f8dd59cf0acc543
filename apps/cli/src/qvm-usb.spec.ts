import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { QemuConnector, labDown } from '@devgate/backend-qemu';
import { recordedFixture } from '@devgate/testkit';
import { runCaptured } from './test-io';

// The seed's qvm-usb flow on a machine with no USB bus: a sys-usb replayed from a recording of a
// real machine, and a real QEMU VM receiving the device.
jest.setTimeout(60_000);

let dir: string;
let domains: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usb-'));
  domains = path.join(dir, 'domains.json');
  process.env.DEVGATE_DOMAINS = domains;
});
afterAll(async () => {
  await labDown(undefined, { registryFile: domains }).catch(() => undefined);
  delete process.env.DEVGATE_DOMAINS;
  fs.rmSync(dir, { recursive: true, force: true });
});

async function usbHostProperties(vm: string): Promise<{ hostbus: number; hostport: string }[]> {
  const connector = new QemuConnector({ registryFile: domains });
  try {
    const children = await connector.execute<{ name: string; type: string }[]>(vm, 'qom-list', {
      path: '/machine/peripheral',
    });
    const hosts = children.filter((c) => c.type === 'child<usb-host>');
    return await Promise.all(
      hosts.map(async (c) => ({
        hostbus: await connector.execute<number>(vm, 'qom-get', {
          path: `/machine/peripheral/${c.name}`,
          property: 'hostbus',
        }),
        hostport: await connector.execute<string>(vm, 'qom-get', {
          path: `/machine/peripheral/${c.name}`,
          property: 'hostport',
        }),
      })),
    );
  } finally {
    connector.dispose();
  }
}

it('lists a recorded sys-usb in the seed’s form, and refuses to attach from it: a recording has no data path', async () => {
  const up = await runCaptured('devgate', ['lab', 'up', 'sys-usb', '--recording', recordedFixture('usbkbd.umockdev')]);
  expect(up.err).toBe('');
  expect((await runCaptured('devgate', ['lab', 'up', 'conferences'])).code).toBe(0);
  expect((await runCaptured('devgate', ['lab', 'list'])).out).toMatch(/^sys-usb +running +0 +\S+usbkbd\.umockdev$/m);

  const listed = await runCaptured('qvm-usb', []);
  expect(listed.out).toMatch(/^sys-usb:1-1\.5\.4\.2 +05f3:0007 \S+$/m);
  expect(listed.out).not.toMatch(/^sys-usb:1-1 /m); // hubs are not listed

  // Before this was refused, the recorded device became usb-host bus 1 port 1.5.4.2 of *this* host.
  const attach = await runCaptured('qvm-usb', ['-a', 'conferences', 'sys-usb:1-1.5.4.2']);
  expect(attach.code).toBe(1);
  expect(attach.err).toMatch(
    /^qvm-usb: error: Device sys-usb:1-1\.5\.4\.2 cannot be attached: sys-usb is read from recording:/,
  );
  expect(await usbHostProperties('conferences')).toEqual([]);
  expect((await runCaptured('qvm-usb', [])).out).toMatch(/^sys-usb:1-1\.5\.4\.2 +05f3:0007 \S+$/m);

  expect((await runCaptured('devgate', ['lab', 'down', 'sys-usb'])).code).toBe(0);
  expect((await runCaptured('qvm-usb', [])).out).not.toContain('sys-usb:');
});
