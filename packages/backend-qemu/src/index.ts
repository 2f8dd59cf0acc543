// @devgate/backend-qemu: QEMU as a devgate hypervisor backend. A QMP client, the domain registry
// (which domains exist and where their QMP sockets are), lab domains for tests, and the connector.
export * from './qmp-client.js';
export * from './domain-registry.js';
export * from './lab.js';
export * from './qemu-connector.js';
export * from './qemu-module.js';
export * from './qemu-attach.js';
export * from './vfio-attach.js';
export * from './qemu-input.js';
export * from './qemu-generic.js';
