// devgate-tray: desktop notifications and a tray menu, a client of devgated.
export const TRAY_NAME = 'devgate-tray';
export * from './dbus.js';
export * from './daemon-api.js';
export * from './daemon-stream.js';
export * from './attach-targets.js';
export * from './notification-text.js';
export * from './notifications.js';
export * from './menu-model.js';
export * from './tray.js';
export * from './tray-module.js';
export { main } from './main.js';
