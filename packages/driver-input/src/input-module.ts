import { type DevgateModule } from '@devgate/core';
import { InputDriver } from './input-driver.js';

/** Everything @devgate/driver-input contributes. */
export const inputModule: DevgateModule = {
  id: 'driver-input',
  register: (registry) => registry.registerDriver(new InputDriver()),
};
