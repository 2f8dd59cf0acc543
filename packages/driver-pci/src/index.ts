// @devgate/driver-pci: PCI devices, USB controllers, IOMMU groups. Not implemented yet; the
// package only holds its place in the layout.
export const PCI_DRIVER_ID = 'pci';
