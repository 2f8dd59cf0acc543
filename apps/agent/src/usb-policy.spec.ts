import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadRecording } from '@devgate/host';
import { materializeHost, recordedFixture, withUsbAuthorizationFiles } from '@devgate/testkit';
import { DevgateAgent } from './agent';
import { UnixListenControl } from './control-channel';

// USB authorization applied inside the backend VM by its agent (USBGuard's rule language), as
// devgated applies it on the host: the keyboard of a recorded machine is blocked in "the VM".
jest.setTimeout(30_000);

const KEYBOARD = '/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2';

it('applies the rules to the USB devices of its VM', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-agent-usb-'));
  const roots = materializeHost(
    withUsbAuthorizationFiles(loadRecording(recordedFixture('usbkbd.umockdev')).tree.devices()),
    path.join(dir, 'root'),
  );
  fs.mkdirSync(path.join(dir, 'ports'));
  const rules = path.join(dir, 'rules.conf');
  fs.writeFileSync(rules, 'block id 05f3:0007\n');
  const logged: string[] = [];
  const agent = new DevgateAgent({
    transport: new UnixListenControl(path.join(dir, 'agent.sock')),
    roots,
    runDir: path.join(dir, 'run'),
    portsDir: path.join(dir, 'ports'),
    usbPolicy: { rules, implicitTarget: 'allow' },
    log: (message) => logged.push(message),
  }).start();
  try {
    const authorized = () => fs.readFileSync(path.join(roots.sys, KEYBOARD, 'authorized'), 'utf8').trim();
    const started = Date.now();
    while (authorized() !== '0' && Date.now() - started < 5_000) await new Promise((r) => setTimeout(r, 20));
    expect(authorized()).toBe('0');
    expect(logged.some((line) => /usb .*: block/.test(line))).toBe(true);
  } finally {
    agent.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
