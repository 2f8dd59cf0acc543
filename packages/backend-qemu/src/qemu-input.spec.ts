import * as fs from 'node:fs';
import { join } from 'node:path';
import { type AttachSpec, type InjectedInputEvent, inputSendEventArgs } from '@devgate/core';
import { labDown, labUp } from './lab.js';
import { QemuConnector } from './qemu-connector.js';
import { decodeInputObjectId, planInputLinux } from './qemu-input.js';
import { Cleanup } from './testing/fixtures.js';

// input-linux objects: the plan QEMU is given, the attachment their ids carry, and what a real QEMU
// does when a node cannot be opened. (A node that opens needs a kernel with an input subsystem: the
// real-kernel test in packages/driver-input runs that in a lab guest.)
jest.setTimeout(30_000);

const port = { devclass: 'input', backend: 'dom0', portId: '1-1' };
const spec: AttachSpec = {
  kind: 'input-linux',
  params: { evdev: '/dev/input/event1,/dev/input/event4', grabToggle: 'scrolllock', grabAll: true, repeat: false },
  options: { 'grab-toggle': 'scrolllock', 'grab-all': 'yes', repeat: 'no' },
};

describe('planInputLinux', () => {
  it('adds one input-linux object per event node, each carrying the attachment and the identity', () => {
    const plan = planInputLinux(port, spec, '0627:0001:68284:u030101');
    expect(plan.objects.map((o) => ({ ...o, id: String(o.id).replace(/n[0-9a-z]+-.*$/, '') }))).toEqual([
      {
        'qom-type': 'input-linux',
        id: 'dgi0',
        evdev: '/dev/input/event1',
        grab_all: true,
        repeat: false,
        'grab-toggle': 'scrolllock',
      },
      {
        'qom-type': 'input-linux',
        id: 'dgi1',
        evdev: '/dev/input/event4',
        grab_all: true,
        repeat: false,
        'grab-toggle': 'scrolllock',
      },
    ]);
    expect(decodeInputObjectId(String(plan.objects[1].id))).toEqual({
      index: 1,
      record: { c: 'input', b: 'dom0', p: '1-1', d: '0627:0001:68284:u030101', o: spec.options },
    });
    expect(plan.objects.every((o) => /^[A-Za-z][A-Za-z0-9_.-]*$/.test(String(o.id)))).toBe(true); // QOM's id rule
    // Another attach of the same device gets other ids: a late detach of the old one cannot take it.
    const again = planInputLinux(port, spec, '0627:0001:68284:u030101');
    expect(again.objects.map((o) => o.id)).not.toEqual(plan.objects.map((o) => o.id));
  });

  it('refuses a spec without nodes from the data path, or with a bad hotkey', () => {
    expect(() => planInputLinux(port, { ...spec, params: { ...spec.params, evdev: '' } }, 'x')).toThrow(/evdev/);
    expect(() => planInputLinux(port, { ...spec, params: { ...spec.params, evdev: 'event1' } }, 'x')).toThrow(/evdev/);
    expect(() => planInputLinux(port, { ...spec, params: { ...spec.params, grabToggle: 'f12' } }, 'x')).toThrow(
      /grab-toggle/,
    );
    expect(decodeInputObjectId('dg-abc')).toBeUndefined();
    expect(decodeInputObjectId('kbd0')).toBeUndefined();
  });
});

describe('input in a real QEMU: input-linux objects, input-send-event', () => {
  const cleanup = new Cleanup();
  let registryFile: string;
  let connector: QemuConnector;
  beforeAll(async () => {
    const dir = await cleanup.tempDir();
    registryFile = join(dir, 'domains.json');
    const [{ pid }] = await labUp(['front'], { registryFile, stateDir: join(dir, 'lab') });
    cleanup.pid(pid);
    cleanup.defer(() => labDown(undefined, { registryFile }));
    connector = new QemuConnector({ registryFile });
  });
  afterAll(async () => {
    connector.dispose();
    await cleanup.run();
  });

  it('leaves the VM as it was when a node cannot be opened, and reports QEMU’s reason', async () => {
    const missing = { ...spec, params: { ...spec.params, evdev: '/dev/input/event1' } };
    expect(fs.existsSync('/dev/input/event1')).toBe(false); // this host has no input subsystem
    await expect(connector.attach('front', port, missing, 'x')).rejects.toMatchObject({
      code: 'DG_QMP_COMMAND_FAILED',
    });
    const objects = await connector.execute<{ name: string }[]>('front', 'qom-list', { path: '/objects' });
    expect(objects.filter((o) => o.name.startsWith('dgi'))).toEqual([]);
    expect(await connector.attachments()).toEqual([]);
    await expect(connector.detach('front', port)).rejects.toMatchObject({ code: 'DG_NOT_ATTACHED' });
  });

  it('gives a real, running QEMU keys, buttons and moves in the form it takes', async () => {
    const events: InjectedInputEvent[] = [
      { kind: 'key', key: 'a', down: true },
      { kind: 'key', key: 'a', down: false },
      { kind: 'btn', button: 'wheel-up', down: true },
      { kind: 'rel', axis: 'x', value: -5 },
    ];
    // A lab VM starts paused: QEMU takes no input then.
    await expect(connector.injectInput('front', events)).rejects.toMatchObject({ code: 'DG_DOMAIN_NOT_RUNNING' });
    await connector.execute('front', 'cont');
    cleanup.defer(() => connector.execute('front', 'stop').catch(() => undefined));
    await expect(connector.injectInput('front', events)).resolves.toBeUndefined();
    // A position needs a tablet, which this VM has not: QEMU refuses the batch, and says why.
    const position: InjectedInputEvent = { kind: 'abs', axis: 'y', value: 90_000 };
    await expect(connector.injectInput('front', [position])).rejects.toThrow(/handler not found for event type abs/);
    expect(inputSendEventArgs([position])).toEqual([{ type: 'abs', data: { axis: 'y', value: 0x7fff } }]);
    // A key QEMU does not know is QEMU's refusal; one of another form never reaches it.
    await expect(connector.injectInput('front', [{ kind: 'key', key: 'nosuchkey', down: true }])).rejects.toMatchObject(
      { code: 'DG_QMP_COMMAND_FAILED' },
    );
    expect(() => inputSendEventArgs([{ kind: 'key', key: '"}, {"execute": "quit', down: true }])).toThrow(/key name/);
    expect(() => inputSendEventArgs([{ kind: 'btn', button: 'back' as 'left', down: true }])).toThrow(/button/);
    expect(() => inputSendEventArgs(Array(257).fill({ kind: 'rel', axis: 'x', value: 1 }))).toThrow(/257/);
  });
});
