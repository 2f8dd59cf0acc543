// devgated: composes the kernel, drivers, sources and connectors, owns state and serves the API.
// Arrives with issue #4; until then the CLI runs the kernel in-process.
export const DAEMON_NAME = 'devgated';
