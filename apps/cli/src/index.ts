// @devgate/cli: `devgate` and the Qubes-compatible `qvm-device`, `qvm-block`, `qvm-usb`, `qvm-pci`.
export { run, runAsMain, PROGRAMS, type ProgramName } from './main.js';
export { type Io } from './io.js';
export * from './format.js';
