import { BehaviorSubject } from 'rxjs';
import { type DeviceInfo, type DeviceSource, HostTree, Kernel } from '@devgate/core';
import { RecordedDevice, type Recording, isRecordedDevice, loadRecording } from '@devgate/host';
import { recordedFixture } from '@devgate/testkit';
import { inputModule } from './input-module';
import { installerDefaultPolicy } from './input-policy';
import { type InputProxyAnswer, type InputProxyAudit, InputProxy } from './input-proxy';
import { isPolicyRule, parsePolicyText } from './parse-input-policy';

let recording: Recording;
beforeAll(() => (recording = loadRecording(recordedFixture('TOSHIBA_NVME.txt'))));
afterAll(() => recording.dispose());

const defaults = parsePolicyText(installerDefaultPolicy('sys-usb'), '50-config-input.policy').entries.filter(
  isPolicyRule,
);

/** A sys-usb whose devices come and go: the Dell laptop's, replayed. */
function harness(rules = defaults, tree: HostTree = recording.tree) {
  const trees = new BehaviorSubject<HostTree>(tree);
  const source: DeviceSource = {
    id: 'replay',
    backend: 'sys-usb',
    hotplug: 'static',
    trees$: trees,
    dispose: () => undefined,
  };
  const kernel = new Kernel().load(inputModule);
  kernel.registerSource(source);
  const manager = kernel.start();
  const asks: {
    device: DeviceInfo;
    candidates: readonly string[];
    reason: string;
    description: string;
    answer: (a: InputProxyAnswer) => void;
  }[] = [];
  const audits: InputProxyAudit[] = [];
  const forwarded: { port: string; frontend: string; events: readonly string[] }[] = [];
  const stopped: string[] = [];
  const proxy = new InputProxy(manager, {
    rules: () => rules,
    ask: (device, candidates, reason, description) =>
      new Promise((answer) => asks.push({ device, candidates, reason, description, answer })),
    audit: (entry) => audits.push(entry),
    forward: (device, frontend, events) => {
      forwarded.push({ port: device.port.portId, frontend, events });
      return { stop: (why) => void stopped.push(`${device.port.portId} ${why}`) };
    },
  });
  proxy.start();
  return {
    proxy,
    asks,
    audits,
    forwarded,
    stopped,
    show: (keep: (devpath: string) => boolean) =>
      trees.next(new HostTree(recording.tree.devices().filter((r) => keep(r.devpath)))),
    unplug: (portPrefix: string) =>
      trees.next(new HostTree(recording.tree.devices().filter((r) => !r.devpath.includes(portPrefix)))),
    replug: () => trees.next(recording.tree),
    dispose: () => {
      proxy.dispose();
      kernel.dispose();
    },
  };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

describe('InputProxy: Qubes’ input proxy, one decision per physical device', () => {
  it('decides again when the event nodes appear after the device; a forward ends when its device goes', async () => {
    // The touchpad first listed with one of its two event nodes (the kernel makes the other a moment later).
    const touchpad = (devpath: string) => devpath.includes('DLL07D1') && /\/event13$/.test(devpath);
    const h = harness(defaults, new HostTree(recording.tree.devices().filter((r) => !touchpad(r.devpath))));
    try {
      await settle();
      expect(h.asks).toEqual([]);
      expect(h.audits.find((a) => a.device.port.portId === 'i2c-DLL07D1_01')?.reason).toMatch(
        /^deny: qubes\.InputTablet \(event14\): /,
      );
      h.replug();
      await settle();
      expect(h.asks.map((a) => a.device.port.portId)).toEqual(['i2c-DLL07D1_01']);
      h.asks[0].answer({ verdict: 'allow', by: 'alice' });
      await settle();
      expect(h.forwarded).toEqual([{ port: 'i2c-DLL07D1_01', frontend: 'dom0', events: ['event13'] }]);
      expect(h.stopped).toEqual([]);
      h.show((devpath) => !devpath.includes('DLL07D1'));
      await settle();
      expect(h.stopped).toEqual(['i2c-DLL07D1_01 device-went']);
    } finally {
      h.dispose();
    }
  });

  it('stops a forward, saying so, when its device is decided again (its event node went first)', async () => {
    const h = harness();
    try {
      await settle();
      h.asks[0].answer({ verdict: 'allow', by: 'alice' });
      await settle();
      expect(h.forwarded).toEqual([{ port: 'i2c-DLL07D1_01', frontend: 'dom0', events: ['event13'] }]);
      // Pulled: the kernel removes the event node a moment before the device.
      h.show((devpath) => !(devpath.includes('DLL07D1') && /\/event13$/.test(devpath)));
      await settle();
      expect(h.stopped).toEqual(['i2c-DLL07D1_01 decided-again']);
    } finally {
      h.dispose();
    }
  });

  it('with Qubes’ defaults asks once for the device with a mouse (two event nodes), and denies the rest', async () => {
    const h = harness();
    try {
      await settle();
      expect(h.asks.map((a) => a.device.port.portId)).toEqual(['i2c-DLL07D1_01']);
      const [ask] = h.asks;
      expect(ask.candidates).toEqual(['dom0']);
      expect(ask.description).toBe('Input: unknown vendor DLL07D1:01 044E:120B');
      expect(ask.reason).toMatch(
        /^input from sys-usb:i2c-DLL07D1_01 \(DLL07D1:01 044E:120B, 044e:120b, touchpad, i2c, interfaces i041800 i051800 i021800\) to dom0; event nodes event13; /,
      );
      const denied = h.audits.filter((a) => a.outcome === 'denied').map((a) => a.device.port.portId);
      expect(denied).toEqual(expect.arrayContaining(['1-9', '1-11', 'serio0', 'card0']));
      expect(h.proxy.list().find((s) => s.device.port.portId === 'i2c-DLL07D1_01')?.verdict).toBe('pending');
      expect(h.forwarded).toEqual([]);

      ask.answer({ verdict: 'allow', by: 'alice' });
      await settle();
      expect(h.forwarded).toEqual([{ port: 'i2c-DLL07D1_01', frontend: 'dom0', events: ['event13'] }]);
      expect(h.audits.at(-1)).toMatchObject({ action: 'answer', outcome: 'ok', frontend: 'dom0', by: 'alice' });
    } finally {
      h.dispose();
    }
  });

  it('an unanswered question denies at its timeout, audited as such; nothing is forwarded', async () => {
    const h = harness();
    try {
      await settle();
      h.asks[0].answer({ verdict: 'deny', by: 'timeout' });
      await settle();
      expect(h.audits.at(-1)).toMatchObject({
        action: 'answer',
        outcome: 'denied',
        reason: expect.stringMatching(/^deny \(no answer before the timeout\): input from sys-usb:i2c-DLL07D1_01/),
      });
      expect(h.forwarded).toEqual([]);
      expect(h.proxy.list().find((s) => s.device.port.portId === 'i2c-DLL07D1_01')?.verdict).toBe('deny');
    } finally {
      h.dispose();
    }
  });

  it('asks again when the device is plugged in again, not while it stays', async () => {
    const h = harness();
    try {
      await settle();
      h.asks[0].answer({ verdict: 'deny', by: 'alice' });
      await settle();
      h.replug(); // the same tree again: nothing changed, nothing asked
      await settle();
      expect(h.asks).toHaveLength(1);
      h.unplug('i2c-DLL07D1:01');
      await settle();
      h.replug();
      await settle();
      expect(h.asks).toHaveLength(2);
    } finally {
      h.dispose();
    }
  });

  it('an allow rule forwards without asking; a policy for another USB VM does nothing here', async () => {
    const allowMouse = parsePolicyText('qubes.InputMouse * sys-usb dom0 allow\n', 'x.policy').entries.filter(
      isPolicyRule,
    );
    const h = harness(allowMouse);
    try {
      await settle();
      expect(h.asks).toEqual([]);
      expect(h.forwarded).toEqual([{ port: 'i2c-DLL07D1_01', frontend: 'dom0', events: ['event13'] }]);
    } finally {
      h.dispose();
    }
    const other = harness(parsePolicyText(installerDefaultPolicy('sys-usb2'), 'y.policy').entries.filter(isPolicyRule));
    try {
      await settle();
      expect(other.asks).toEqual([]);
      expect(other.forwarded).toEqual([]);
      expect(other.audits.every((a) => a.outcome === 'denied')).toBe(true);
    } finally {
      other.dispose();
    }
  });

  it('after a yes, sends only what may go to the answered target (a call allowed elsewhere stays home)', async () => {
    // The touchpad's tablet node may go to sys-gui-gpu only; its pointing stick asks, and the answer is dom0.
    const split = parsePolicyText(
      'qubes.InputMouse * sys-usb dom0 ask\nqubes.InputTablet * sys-usb dom0 allow target=sys-gui-gpu\n',
      'gui.policy',
    ).entries.filter(isPolicyRule);
    const h = harness(split);
    try {
      await settle();
      const ask = h.asks.find((a) => a.device.port.portId === 'i2c-DLL07D1_01')!;
      expect(ask.candidates).toEqual(['dom0']);
      ask.answer({ verdict: 'allow', by: 'alice' });
      await settle();
      expect(h.forwarded.filter((f) => f.port === 'i2c-DLL07D1_01')).toEqual([
        { port: 'i2c-DLL07D1_01', frontend: 'dom0', events: ['event13'] },
      ]);
    } finally {
      h.dispose();
    }
  });

  it('flags a keyboard that is also a USB stick in the question itself', async () => {
    const kbd = loadRecording(recordedFixture('usbkbd.umockdev'));
    const usbPath = '/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2';
    const stickKeyboard = new HostTree([
      ...kbd.tree
        .devices()
        .map((r) =>
          r.devpath === usbPath && isRecordedDevice(r)
            ? new RecordedDevice({ ...r, properties: { ...r.properties, ID_USB_INTERFACES: ':030101:080650:' } })
            : r,
        ),
    ]);
    const askKeyboards = parsePolicyText('qubes.InputKeyboard * sys-usb dom0 ask\n', 'k.policy').entries.filter(
      isPolicyRule,
    );
    const h = harness(askKeyboards, stickKeyboard);
    try {
      await settle();
      expect(h.asks).toHaveLength(1);
      expect(h.asks[0].description).toMatch(
        /^Keyboard: .* \[BadUSB\? this keyboard is also USB storage in one USB device\]$/,
      );
      expect(h.asks[0].reason).toMatch(
        /^WARNING: BadUSB\? this keyboard is also USB storage in one USB device; input from sys-usb:1-1\.5\.4\.2 \(/,
      );
      expect(h.asks[0].reason).toMatch(/interfaces i010300 u030101 u080650\)/);
    } finally {
      h.dispose();
      kbd.dispose();
    }
  });
});
