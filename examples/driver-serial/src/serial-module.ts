/**
 * Everything @devgate-examples/driver-serial contributes: one device-class driver. devgated loads
 * this file when its configuration names the package (`"modules": ["@devgate-examples/driver-serial"]`).
 */
import { type DevgateModule } from '@devgate/core';
import { SerialDriver } from './serial-driver.js';

export const devgateModule: DevgateModule = {
  id: 'driver-serial',
  register: (registry) => registry.registerDriver(new SerialDriver()),
};

export { SerialDriver, parseSerialPorts } from './serial-driver.js';
