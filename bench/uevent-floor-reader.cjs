// The lower bound of the uevent line: a Node process that does nothing with an event but say it
// came. It reads the same `udevadm monitor --kernel --udev --property` devgated reads, and writes the
// name of each device a kernel `add` announces to stdout; "ready" once udevadm listens.
'use strict';
const { spawn } = require('node:child_process');

const monitor = spawn('udevadm', ['monitor', '--kernel', '--udev', '--property'], {
  stdio: ['ignore', 'pipe', 'ignore'],
});
process.on('SIGTERM', () => {
  monitor.kill();
  process.exit(0);
});
let buffer = '';
let ready = false;
monitor.stdout.setEncoding('utf8');
monitor.stdout.on('data', (chunk) => {
  buffer += chunk;
  let end;
  while ((end = buffer.indexOf('\n\n')) >= 0) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    if (!ready) {
      // udevadm's header, printed once both sockets are bound.
      ready = true;
      process.stdout.write('ready\n');
      continue;
    }
    if (block.startsWith('KERNEL[') && block.includes('\nACTION=add\n')) {
      const name = /\nDEVNAME=(?:\/dev\/)?(\S+)/.exec(block)?.[1];
      if (name) process.stdout.write(`${name}\n`);
    }
  }
});
