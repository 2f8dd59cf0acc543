import * as fs from 'node:fs';
import { firstValueFrom } from 'rxjs';
import { type HostTree, Kernel } from '@devgate/core';
import { type Recording, RecordedHostSource, loadRecording } from '@devgate/host';
import { describeDriverConformance, recordedFixture, recordedFixturesDir, staticSource } from '@devgate/testkit';
import { type UsbNames } from './usb-ids';
import { UsbDriver } from './usb-driver';
import { usbModule } from './usb-module';

const NO_NAMES: UsbNames = { vendor: () => undefined, product: () => undefined };

// Every recording, the ones without USB devices too: a driver must handle those as well.
const recordings = new Map<string, Recording>(
  fs
    .readdirSync(recordedFixturesDir())
    .filter((name) => name !== 'SOURCES.md' && !name.endsWith('.lsblk.json'))
    .sort()
    .map((name) => [name, loadRecording(recordedFixture(name))]),
);
afterAll(() => recordings.forEach((recording) => recording.dispose()));

describeDriverConformance('usb', {
  createDriver: () => new UsbDriver(NO_NAMES),
  trees: () =>
    Object.fromEntries([...recordings].map(([name, recording]): [string, HostTree] => [name, recording.tree])),
});

describe('UsbDriver', () => {
  it('discovers with the host’s own usb.ids by default (whatever this host has)', async () => {
    const tree = recordings.get('fido2.umockdev')!.tree;
    const [key] = await firstValueFrom(new UsbDriver().discover(staticSource(tree, 'sys-usb')));
    expect(key.port).toEqual({ devclass: 'usb', backend: 'sys-usb', portId: '1-2.3' });
    expect(key.vendor).toBe('Yubico'); // the device's own string wins over any database
  });

  it('lists a recorded backend’s USB devices through the kernel', () => {
    const kernel = new Kernel().load(usbModule);
    try {
      kernel.registerSource(new RecordedHostSource(recordedFixture('LENOVO_T420.txt'), 'sys-usb'));
      const manager = kernel.start();
      const ports = manager.list({ devclass: 'usb' }).map((d) => `${d.port.backend}:${d.port.portId}`);
      expect(ports.sort()).toEqual(['sys-usb:1-1.3', 'sys-usb:1-1.4', 'sys-usb:1-1.6']);
    } finally {
      kernel.dispose();
    }
  });
});
