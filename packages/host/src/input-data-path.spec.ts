import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type AttachSpec, type DeviceInfo } from '@devgate/core';
import { rootsUnder } from './sysfs-reader';
import { hostDataPath } from './host-data-path';

// The data path of an input device: its event nodes, each checked by major:minor against what was
// listed. Real character nodes (mknod needs root, as the tests do).
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-input-path-'));
  fs.mkdirSync(path.join(dir, 'dev', 'input'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'sys'), { recursive: true });
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const keyboard: DeviceInfo = {
  port: { devclass: 'input', backend: 'dom0', portId: '1-1' },
  deviceId: '0627:0001:68284:u030101',
  interfaces: ['i010300', 'u030101'],
  data: { 'event-nodes': 'event1,event4', 'event-devices': '13:65,13:68' },
};
const spec: AttachSpec = {
  kind: 'input-linux',
  params: { events: 'event1,event4', devices: '13:65,13:68', grabToggle: 'ctrl-ctrl', grabAll: false, repeat: false },
  options: { 'grab-toggle': 'ctrl-ctrl', 'grab-all': 'no', repeat: 'no' },
};
const node = (name: string, majMin?: string) => {
  const file = path.join(dir, 'dev', 'input', name);
  if (majMin) execFileSync('mknod', [file, 'c', ...majMin.split(':')]);
  else fs.writeFileSync(file, '');
};

it('fills in the event nodes when each is the character device listed', async () => {
  node('event1', '13:65');
  node('event4', '13:68');
  const routed = await hostDataPath(rootsUnder(dir), keyboard, spec);
  expect(routed.params.evdev).toBe(`${dir}/dev/input/event1,${dir}/dev/input/event4`);
  expect(routed.options).toEqual(spec.options);
});

it('refuses a node that is another device now (a reused name), or no device at all', async () => {
  node('event1', '13:65');
  node('event4', '13:69');
  await expect(hostDataPath(rootsUnder(dir), keyboard, spec)).rejects.toMatchObject({
    code: 'DG_DEVICE_CHANGED',
    message: expect.stringContaining('event4 is 13:69, listed as 13:68'),
  });
  fs.rmSync(path.join(dir, 'dev', 'input', 'event4'));
  node('event4');
  await expect(hostDataPath(rootsUnder(dir), keyboard, spec)).rejects.toMatchObject({
    code: 'DG_DEVICE_CHANGED',
    message: expect.stringContaining('is not a character device'),
  });
});

it('never builds a path from a name that is not an event node', async () => {
  const hostile = { ...spec, params: { ...spec.params, events: '../../etc/passwd', devices: '1:3' } };
  await expect(hostDataPath(rootsUnder(dir), keyboard, hostile)).rejects.toMatchObject({ code: 'DG_DRIVER_CONTRACT' });
});
