// @devgate/backend-agent: backend VMs served by devgate-agent. The protocol both ends speak, the
// parser of what an agent sends (untrusted), and AgentSource, the device source devgated and the
// CLI read a backend VM through.
export * from './protocol.js';
export * from './line-reader.js';
export * from './parse-agent-message.js';
export * from './wire-tree.js';
export * from './agent-source.js';
export * from './testing/fake-agent.js';
