import { type DevgateModule } from '@devgate/core';
import { PciDriver } from './pci-driver.js';

/** Everything @devgate/driver-pci contributes. */
export const pciModule: DevgateModule = {
  id: 'driver-pci',
  register: (registry) => registry.registerDriver(new PciDriver()),
};
