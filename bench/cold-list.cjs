// The cold listing: `devgate list --json` with no devgated, a fresh process each round, against what
// a user could run instead on the same devices in the same run: Node starting and doing nothing (a
// lower bound for any Node CLI), drivelist 12 `list()`, systeminformation `blockDevices()`,
// `lsblk -J`, and Node reading only the files a block listing needs (block-read-floor.cjs, a lower
// bound for any Node listing). The anchor set: 64 loop disks of 3 labelled partitions each, listed once with a
// systemd-udevd running (as on every real host) and once without (blkid probes instead of udev's
// database). Required by bench/run.cjs (BENCH_ONLY=coldList runs this alone).
'use strict';
require('reflect-metadata'); // before @devgate/testkit (tsyringe needs it), when this file runs alone
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { median, timeProcess } = require('./timing.cjs');
const { shipped } = require('./shipped.cjs');
const { createLoopDisk, ensureUdevd, udevdRunning } = require('@devgate/testkit');

const DISKS = 64;
const ROUNDS = Math.min(Number(process.env.BENCH_ROUNDS ?? 30), 30);
const WARMUP = 3;

function loadavg() {
  return fs.readFileSync('/proc/loadavg', 'utf8').trim();
}

/** The contenders, each a fresh process per round; `count` says how many devices its output has. */
function contenders(dir) {
  const env = {
    ...process.env,
    // No devgated: a socket nobody listens on. The domain registry is the bench's own (empty), so
    // VMs another user registered are not read back (the cold listing reads every running VM).
    DEVGATE_SOCKET: path.join(dir, 'no-devgated.sock'),
    DEVGATE_DOMAINS: path.join(dir, 'cold-domains.json'),
  };
  const drivelist = require.resolve('drivelist');
  const si = require.resolve('systeminformation');
  const print = (expr) => `${expr}.then((d) => process.stdout.write(JSON.stringify(d)))`;
  return [
    {
      name: 'devgate list --json',
      command: process.execPath,
      args: shipped('apps/cli/bin/devgate.cjs').argv(['list', '--json']),
      env,
      count: (out) => JSON.parse(out).filter((d) => d.class === 'block').length,
    },
    { name: 'node -e 0', command: process.execPath, args: ['-e', '0'], env, count: () => undefined },
    {
      name: 'drivelist list()',
      command: process.execPath,
      args: ['-e', print(`require(${JSON.stringify(drivelist)}).list()`)],
      env,
      count: (out) => JSON.parse(out).length,
    },
    {
      name: 'systeminformation blockDevices()',
      command: process.execPath,
      args: ['-e', print(`require(${JSON.stringify(si)}).blockDevices()`)],
      env,
      count: (out) => JSON.parse(out).length,
    },
    {
      name: 'floor: Node + the reads',
      command: process.execPath,
      args: [path.join(__dirname, 'block-read-floor.cjs'), '--count'],
      env,
      count: (out) => Number(out),
    },
    {
      name: 'lsblk -J',
      command: 'lsblk',
      args: ['-J'],
      env,
      count: (out) => {
        const walk = (list) => list.reduce((n, d) => n + 1 + walk(d.children ?? []), 0);
        return walk(JSON.parse(out).blockdevices);
      },
    },
  ];
}

/** Every contender, interleaved round by round so all see the same machine load; medians. */
async function measure(dir, label) {
  const all = contenders(dir);
  const counts = [];
  for (const c of all) counts.push(c.count((await timeProcess(c.command, c.args, c.env, true)).stdout));
  const times = all.map(() => []);
  const before = loadavg();
  for (let round = 0; round < ROUNDS + WARMUP; round++) {
    // A different first contender each round: none always runs right after another.
    for (let k = 0; k < all.length; k++) {
      const i = (round + k) % all.length;
      const { ms } = await timeProcess(all[i].command, all[i].args, all[i].env);
      if (round >= WARMUP) times[i].push(ms);
    }
  }
  const [ours, node, drivelist, si, floor, lsblk] = times.map(median);
  const after = loadavg();
  // Devices another user adds or removes meanwhile change what every contender lists: said, not hidden.
  const countsAfter = [];
  for (const c of all) countsAfter.push(c.count((await timeProcess(c.command, c.args, c.env, true)).stdout));
  const changed = countsAfter.some((n, i) => n !== counts[i]);
  const devices = (i) =>
    counts[i] === undefined
      ? ''
      : ` (${counts[i]}${countsAfter[i] === counts[i] ? '' : ` then ${countsAfter[i]}`} block devices in its output)`;
  console.log(
    `cold listing, ${label}: wall time of a fresh process to exit, median of ${ROUNDS} rounds` +
      `  [loadavg before: ${before}; after: ${after}]`,
  );
  const line = (i, ms, what) =>
    console.log(`  ${all[i].name.padEnd(34)} ${ms.toFixed(1).padStart(7)} ms  ${what}${devices(i)}`);
  const verdict = (ratio, target) =>
    `${ratio.toFixed(2)}x (target <= ${target}x: ${ratio <= target ? 'met' : 'NOT met'})`;
  line(0, ours, 'no devgated, its own (empty) domain registry and socket');
  line(1, node, 'Node starting and exiting: a lower bound for any Node CLI');
  line(2, drivelist, 'Node + drivelist 12 (runs lsblk --output-all; leaves loop devices out)');
  line(3, si, 'Node + systeminformation (runs lsblk -bPo ...)');
  line(4, floor, 'a lower bound: Node reading the files a block listing needs, fewest calls, nothing built');
  line(5, lsblk, 'util-linux lsblk, no Node');
  if (changed) console.log('  (the device set changed during these rounds: another user added or removed devices)');
  console.log(
    `  devgate / node -e 0   ${verdict(ours / node, 1.25)}   (the floor alone: ${(floor / node).toFixed(2)}x)`,
  );
  console.log(`  devgate / drivelist   ${verdict(ours / drivelist, 0.4)}`);
  console.log(
    `  devgate / systeminformation ${(ours / si).toFixed(2)}x   devgate / lsblk -J ${(ours / lsblk).toFixed(2)}x`,
  );
}

/** A stale database (left by a udevd that is gone) is set aside while no udevd runs, and put back. */
function setAsideStaleUdev() {
  if (!fs.existsSync('/run/udev/data')) return () => {};
  const aside = `/run/udev.devgate-bench-${process.pid}`;
  fs.renameSync('/run/udev', aside);
  return () => {
    if (!fs.existsSync('/run/udev')) fs.renameSync(aside, '/run/udev');
    else fs.rmSync(aside, { recursive: true, force: true });
  };
}

/** Partitions first (partx -d), then the loop device; each disk once, even when another fails. */
function disposeAll(disks) {
  const errors = [];
  while (disks.length > 0) {
    try {
      disks.shift().dispose();
    } catch (error) {
      errors.push(error);
    }
  }
  if (errors.length > 0) throw errors[0];
}

async function coldList(dir) {
  const disks = [];
  try {
    for (let i = 0; i < DISKS; i++) {
      disks.push(
        createLoopDisk({
          sizeMiB: 8,
          partitions: [{ sizeMiB: 2, label: `DG${i}A` }, { sizeMiB: 2, label: `DG${i}B` }, { label: `DG${i}C` }],
        }),
      );
    }
    // Without udevd first, where none runs: blkid probes instead of udev's database.
    if (udevdRunning()) {
      console.log('cold listing, without udevd: not measured (a systemd-udevd this bench did not start is running)');
    } else {
      const putBack = setAsideStaleUdev();
      try {
        await measure(dir, 'no udevd running');
      } finally {
        putBack();
      }
      if (udevdRunning()) console.log('  (a udevd started during that measurement: the figures above are mixed)');
    }
    const udevd = await ensureUdevd();
    try {
      execFileSync('udevadm', ['trigger', '--action=add']);
      execFileSync('udevadm', ['settle', '--timeout=60']);
      await measure(dir, `systemd-udevd running${udevd.started ? ' (started by the bench)' : ''}`);
      // Removed while udevd runs, so its database does not keep them.
      disposeAll(disks);
    } finally {
      await udevd.stop();
    }
  } finally {
    disposeAll(disks);
  }
}

module.exports = { coldList };
