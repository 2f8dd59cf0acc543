// @devgate/host: device sources. The local host (sysfs, /dev, udev data, kernel uevents) and
// recorded hosts (umockdev, udevadm export-db, lsblk sysfs tarballs).
export * from './parse-udev-data.js';
export * from './sysfs-reader.js';
export * from './uevent-monitor.js';
export * from './local-host-source.js';
export * from './host-data-path.js';
export * from './block-usage.js';
export * from './pci-vfio.js';
export * from './recorded-host-source.js';
export * from './recorded-device.js';
export * from './parse-umockdev.js';
export * from './parse-udev-export-db.js';
export * from './load-sysfs-tarball.js';
export * from './recording.js';
export * from './input-data-path.js';
export * from './node-data-path.js';
