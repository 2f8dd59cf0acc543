// @devgate/driver-input: keyboards, mice, tablets, touchpads (one entry per physical device, classified
// as udev's input_id does), input-linux passthrough, and Qubes' input policy in both formats.
export * from './input-module.js';
export * from './input-driver.js';
export * from './input-attach.js';
export * from './input-class.js';
export * from './parse-input-capabilities.js';
export * from './parse-input-devices.js';

/** The class id, as the placeholder package exported it. */
export { INPUT_CLASS_ID as INPUT_DRIVER_ID } from './parse-input-devices.js';
export * from './parse-input-policy.js';
export * from './input-policy.js';
export * from './input-proxy.js';
export * from './input-replug.js';
export * from './forwarded-events.js';
export * from './input-forwarding.js';
