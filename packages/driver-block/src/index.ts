// @devgate/driver-block: the block device class.
export * from './block-module.js';
export * from './block-driver.js';
export * from './parse-block-devices.js';
export * from './block-attach.js';
