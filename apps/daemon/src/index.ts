// @devgate/daemon: devgated. Composes the kernel, drivers, sources and connectors from a config
// file, owns the state (SQLite) and serves the API on Unix sockets.
export * from './config.js';
export * from './devgated.js';
export * from './store/state-store.js';
export { MIGRATIONS, SCHEMA_VERSION, type Migration, migrate } from './store/migrations.js';
export { type DaemonEvent, DaemonEvents } from './services/daemon-events.js';
export { DeviceService, denyListHook } from './services/device-service.js';
export { type Ask } from './services/asks.js';
export * from './driver-packages.js';
