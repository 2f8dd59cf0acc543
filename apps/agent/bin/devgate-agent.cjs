#!/usr/bin/env node
'use strict';
// Blocking reads and writes of virtio-serial ports run in libuv's thread pool (one of each per
// port in use): give it room before anything starts it.
process.env.UV_THREADPOOL_SIZE = process.env.UV_THREADPOOL_SIZE || '32';
require('reflect-metadata');
try {
  require('../dist/main.js').runAgent(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`devgate-agent: error: ${error.message}\n`);
  process.exitCode = 1;
}
