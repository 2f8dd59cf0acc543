import { type DevgateModule } from '@devgate/core';
import { UsbDriver } from './usb-driver.js';

/** Everything @devgate/driver-usb contributes. */
export const usbModule: DevgateModule = {
  id: 'driver-usb',
  register: (registry) => registry.registerDriver(new UsbDriver()),
};
