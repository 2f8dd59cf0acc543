import { type DevgateModule } from '@devgate/core';
import { BlockDriver } from './block-driver.js';

/** Everything @devgate/driver-block contributes. */
export const blockModule: DevgateModule = {
  id: 'driver-block',
  register: (registry) => registry.registerDriver(new BlockDriver()),
};
