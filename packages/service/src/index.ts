// @devgate/service: what devgated and the CLI without it share. The configuration, the built-in
// modules, driver packages, the device service and its events, and the SQLite state store.
export * from './config.js';
export * from './builtin-modules.js';
export * from './driver-packages.js';
export * from './daemon-events.js';
export { DeviceService, denyListHook, failureAuditEntry } from './device-service.js';
export * from './store/state-store.js';
export * from './store/assignments.js';
export * from './store/deny-lists.js';
export * from './store/policy-answers.js';
export * from './store/devices-seen.js';
export * from './store/audit-log.js';
export * from './store/attachment-journal.js';
export { MIGRATIONS, SCHEMA_VERSION, type Migration, migrate } from './store/migrations.js';
export { openStateStore } from './open-state-store.js';
