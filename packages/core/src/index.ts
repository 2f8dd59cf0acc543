// @devgate/core: the device model, the plugin API and the kernel every driver and app composes.
// tsyringe needs the reflect polyfill before it loads: a package or script that requires core first
// (outside devgated and devgate's jest preset) gets it from here.
import 'reflect-metadata';
export * from './errors.js';
export * from './sanitize.js';
export * from './ids-file.js';
export * from './checked-file.js';
export * from './natural-order.js';
export * from './disposable.js';
export * from './interfaces.js';
export * from './device-model.js';
export * from './device-json.js';
export * from './assignments.js';
export * from './frontend-names.js';
export * from './host-tree.js';
export * from './identity.js';
export * from './events.js';
export * from './plugin-api.js';
export * from './input-send-event.js';
export * from './device-manager.js';
// The kernel's check of what drivers list, for the conformance kit to run as is.
export { type CheckedSnapshot, invalidDevicesError, snapshotChecker } from './device-check.js';
export * from './kernel.js';
export * from './attach-kinds.js';
export * from './input-linux.js';
export * from './module-loader.js';
export * from './driver-report.js';
export * from './helper-process.js';
