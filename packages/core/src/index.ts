// @devgate/core: the device model, the plugin API and the kernel every driver and app composes.
export * from './errors.js';
export * from './sanitize.js';
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
export * from './device-manager.js';
export * from './kernel.js';
export * from './attach-kinds.js';
export * from './module-loader.js';
export * from './driver-report.js';
