#!/usr/bin/env node
'use strict';
// Saves a screenshot of a real "Device available" notification to docs/tray-notification.png (or
// the path given): it runs the end-to-end notification test (Xvfb, a session dbus-daemon, dunst,
// devgated, a QEMU lab VM, a loop device) with DEVGATE_TRAY_SCREENSHOT set. Needs root, like the test.
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const out = path.resolve(process.argv[2] ?? path.join(__dirname, '..', '..', '..', 'docs', 'tray-notification.png'));
const jest = require.resolve('jest/bin/jest');
const run = spawnSync(
  process.execPath,
  [jest, 'src/notifications.spec.ts', '-t', 'announces a new loop device exactly once'],
  { cwd: path.join(__dirname, '..'), stdio: 'inherit', env: { ...process.env, DEVGATE_TRAY_SCREENSHOT: out } },
);
if (run.status === 0) process.stdout.write(`screenshot: ${out}\n`);
process.exitCode = run.status ?? 1;
