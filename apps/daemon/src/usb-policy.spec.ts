import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { loadRecording } from '@devgate/host';
import { addDevice, materializeHost, recordedFixture, withUsbAuthorizationFiles } from '@devgate/testkit';
import { defaultConfig } from '@devgate/service';
import { Devgated } from './devgated';

// devgated enforcing a USBGuard rules file on a host tree made from recordings of real machines.
jest.setTimeout(30_000);

const KEYBOARD = '/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2';

it('applies the policy to present devices and to a device plugged in later, and audits each decision', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgated-usb-'));
  const keyboard = loadRecording(recordedFixture('usbkbd.umockdev'));
  const camera = loadRecording(recordedFixture('canon-powershot-sx200.umockdev'));
  let daemon: Devgated | undefined;
  try {
    const sysroot = path.join(dir, 'host');
    materializeHost(withUsbAuthorizationFiles(keyboard.tree.devices()), sysroot);
    const rules = path.join(dir, 'rules.conf');
    fs.writeFileSync(rules, 'block id 05f3:0007\nreject id 04a9:31c0\n');
    daemon = await Devgated.start(
      {
        ...defaultConfig(),
        socket: path.join(dir, 'devgate.sock'),
        stateDir: path.join(dir, 'state'),
        backends: { dom0: { sysroot } },
        access: { users: [], groups: [] },
        usbPolicy: { rules, implicitTarget: 'allow' },
      },
      pino({ level: 'silent' }),
    );
    const attribute = (devpath: string, name: string) =>
      fs.readFileSync(path.join(sysroot, 'sys', devpath, name), 'utf8').trim();
    expect(attribute(KEYBOARD, 'authorized')).toBe('0');

    // The camera arrives: rejected (removed) within a second.
    const cameraRecords = withUsbAuthorizationFiles(camera.tree.devices());
    const plugged = Date.now();
    addDevice(sysroot, cameraRecords);
    const cameraPath = cameraRecords.find(
      (r) => r.properties.ID_MODEL_ID === '31c0' && r.properties.DEVTYPE === 'usb_device',
    )!.devpath;
    while (attribute(cameraPath, 'remove') !== '1' && Date.now() - plugged < 1000)
      await new Promise((r) => setTimeout(r, 10));
    expect(attribute(cameraPath, 'remove')).toBe('1');

    const audit = daemon.store.audit.query({ action: 'policy' });
    expect(audit.find((e) => e.portId === '1-1.5.4.2')).toMatchObject({
      outcome: 'denied',
      actor: 'devgated (usb policy)',
    });
    expect(audit.find((e) => e.portId === '1-1.5.4.2')?.reason).toMatch(/^block: /);
    expect(audit.some((e) => e.reason?.startsWith('reject: ') && e.outcome === 'denied')).toBe(true);
  } finally {
    await daemon?.stop();
    keyboard.dispose();
    camera.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
