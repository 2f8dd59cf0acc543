// @devgate/daemon: devgated. Composes the kernel, drivers, sources and connectors from a config
// file, owns the state (SQLite, from @devgate/service) and serves the API on Unix sockets.
export * from './devgated.js';
export { type AskAnswer, AskService } from './services/asks.js';
// What starting devgated takes, for those who start it (the tray's lab daemon).
export { type DaemonConfig } from '@devgate/service';
