// @devgate/agent: devgate-agent, which runs inside a backend VM (sys-usb), reports its devices to
// devgated and exports them to other VMs (docs/agent-protocol.md).
export * from './agent.js';
export * from './control-channel.js';
export * from './exports.js';
export * from './virtio-port.js';
export * from './main.js';
