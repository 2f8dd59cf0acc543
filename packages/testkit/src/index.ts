// @devgate/testkit: what tests and third-party drivers need: real loop disks, recorded hosts,
// fake sysfs trees, hostile strings and the driver conformance suite.
export * from './loop-device.js';
export * from './udevd.js';
export * from './hostile.js';
export * from './conformance.js';
export * from './fixtures.js';
export * from './materialize.js';
export * from './usb-authorization-files.js';
export * from './pty.js';
export * from './conformance-checks.js';
export * from './until.js';
export * from './stale-socket.js';
export * from './child-output.js';
export * from './saved-env.js';
