import * as path from 'node:path';
import { firstValueFrom } from 'rxjs';
import { HostTree, Kernel, type RawDeviceRecord, describeDevice } from '@devgate/core';
import { loadRecording } from '@devgate/host';
import { describeDriverConformance, recordedFixture, staticSource } from '@devgate/testkit';
import { SerialDriver } from './serial-driver';
import { devgateModule } from './serial-module';

// The adapters this example was written for, and a real machine's UARTs (a ThinkPad T420: Intel
// AMT's serial-over-LAN port on PCI, and the 8250 driver's placeholders with no chip behind them).
const adapters = loadRecording(path.join(__dirname, '../fixtures/usb-serial-adapters.umockdev')).tree;
const t420 = loadRecording(recordedFixture('LENOVO_T420.txt')).tree;
const withoutFtdi = new HostTree(
  adapters.devices().filter((r) => !r.devpath.includes('/1-2')),
  adapters.usage,
);

describeDriverConformance('serial', {
  createDriver: () => new SerialDriver(),
  trees: () => ({ 'usb-serial-adapters.umockdev': adapters, 'LENOVO_T420.txt': t420 }),
  hotplug: () => ({
    'FTDI adapter plugged in': { before: withoutFtdi, after: adapters },
    'FTDI adapter pulled': { before: adapters, after: withoutFtdi },
  }),
  attachOptions: { valid: [{}, { model: 'usb-serial' }], invalid: [{ model: 'isa-serial' }, { 'read-only': 'yes' }] },
});

describe('SerialDriver', () => {
  it('lists USB adapters under their USB device, CDC ACM boards, and UARTs that answered', async () => {
    const devices = await firstValueFrom(new SerialDriver().discover(staticSource(adapters)));
    expect(devices.map((d) => [d.port.portId, d.deviceId, describeDevice(d), d.parent?.portId])).toEqual([
      [
        'ttyACM0',
        '2341:0043:85736323838351F0E1C1:u020201',
        'Network: Arduino (www.arduino.cc) 85736323838351F0E1C1',
        '1-3',
      ],
      ['ttyS0', 'uart:ttyS0', '?******: unknown vendor UART ttyS0', undefined],
      ['ttyUSB0', '0403:6001:A50285BI:uffffff', 'uffffff: FTDI FT232R USB UART', '1-2'],
    ]);
    expect(devices[2].data).toEqual({
      'major-minor': '188:0',
      tty: 'ttyUSB0',
      'vendor-id': '0403',
      'product-id': '6001',
    });
  });

  it('keeps its device id four fields of id characters, as the USB class does, whatever serial the adapter reports', async () => {
    // Cheap adapters report anything as their serial; a `:` would split Qubes' vvvv:pppp:serial:interfaces.
    const odd = new HostTree(
      adapters.devices().map((r): RawDeviceRecord =>
        r.devpath.endsWith('/usb1/1-2')
          ? {
              ...r,
              // udev keeps the `:` in ID_SERIAL_SHORT and makes the space `_`.
              properties: { ...r.properties, ID_SERIAL_SHORT: 'A5:02_85' },
              attribute: (name) => (name === 'serial' ? 'A5:02 85' : r.attribute(name)),
            }
          : r,
      ),
      adapters.usage,
    );
    const devices = await firstValueFrom(new SerialDriver().discover(staticSource(odd)));
    const ftdi = devices.find((d) => d.port.portId === 'ttyUSB0')!;
    expect(ftdi.deviceId).toBe('0403:6001:A5_02_85:uffffff');
    expect(ftdi.serial).toBe('A5:02 85');
  });

  it('finds the PCI serial port of a real machine, not the 8250 placeholders', async () => {
    const devices = await firstValueFrom(new SerialDriver().discover(staticSource(t420)));
    expect(devices.map((d) => d.port.portId)).toEqual(['ttyS4']);
  });

  it('attaches as a chardev on the node the backend finds, plus usb-serial', () => {
    const spec = new SerialDriver().attachSpec({} as never, {});
    expect(spec).toEqual({
      kind: 'qemu-device',
      params: { device: 'usb-serial', chardev: 'serial', hostNode: 'char' },
      options: { model: 'usb-serial' },
    });
  });

  it('is registered with one call, and its sources read /sys/class/tty', () => {
    const kernel = new Kernel().load(devgateModule);
    const asked: string[] = [];
    kernel.registerSource({ ...staticSource(adapters), readSubsystems: (s) => asked.push(...s) });
    const manager = kernel.start();
    expect(asked).toEqual(['tty']);
    expect(manager.list({ devclass: 'serial' }).map((d) => d.port.portId)).toEqual(['ttyACM0', 'ttyS0', 'ttyUSB0']);
    kernel.dispose();
  });
});
