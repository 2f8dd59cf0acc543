// Test helpers: a temp directory per test, removed afterwards, and small device records.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type DeviceInfo, type InterfaceCode } from '@devgate/core';

export class TempDir {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-store-'));

  file(name = 'state.db'): string {
    return path.join(this.dir, name);
  }

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export function usbDevice(
  portId: string,
  deviceId: string,
  interfaces: InterfaceCode[] = ['u080650'],
  backend = 'sys-usb',
): DeviceInfo {
  return { port: { backend, portId, devclass: 'usb' }, deviceId, interfaces, data: {} };
}
