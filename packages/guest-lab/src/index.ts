// @devgate/guest-lab: real Linux guests under QEMU with emulated USB, input and storage devices,
// booted from the host's own userland, for tests and demos (see guest.ts for the layout).
export * from './accelerator.js';
export * from './agent-channel.js';
export * from './guest-errors.js';
export * from './guest-image.js';
export * from './guest.js';
export * from './lab-devices.js';
export * from './reaper.js';
export * from './images.js';
export * from './os-lab.js';
