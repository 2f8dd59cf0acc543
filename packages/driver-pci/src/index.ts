// @devgate/driver-pci: PCI devices (discovery, VFIO attach specs), USB controllers and what sits
// behind them, IOMMU groups, the USB-controller report and hiding controllers at boot.
export * from './pci-module.js';
export * from './pci-driver.js';
export * from './pci-attach.js';
export * from './pci-address.js';
export * from './pci-ids.js';
export * from './parse-pci-devices.js';
export * from './pci-devices.js';
export * from './usb-controllers.js';
export * from './boot-hiding.js';

/** The device class id, for code that names it without the driver. */
export const PCI_DRIVER_ID = 'pci';
