// Kernel uevent to a client's event while two disks' 256 partitions appear at once (ADR 0015):
// devgated's SSE stream, and the floor of the same burst, a bare Node reader of the same monitor.
'use strict';
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { execFileSync, spawn } = require('node:child_process');
const { ensureUdevd, removePartitions } = require('@devgate/testkit');

const PARTITIONS_PER_DISK = 128; // a disk holds at most 255 partitions here

/**
 * Both ends of the measurement (this process, which reads the events, and its reference monitor)
 * run at the highest priority, so that neither waits for the CPU the burst keeps busy.
 */
async function ueventLatency(dir, { startDaemon, shippedNice }) {
  const priority = os.getPriority();
  os.setPriority(-20);
  // With systemd-udevd running, as on every real host: its probes of the new partitions, database
  // writes and `change` events are what the burst races with.
  const udevd = await ensureUdevd();
  try {
    const images = [0, 1].map((n) => partitionedImage(path.join(dir, `parts${n}.img`)));
    const floor = await burst(images, (seen) => bareReader(seen, shippedNice()));
    const ours = await burst(images, (seen) => devgatedReader(dir, seen, startDaemon));
    const verdict = ours.p99 <= 20 && ours.lost === 0 ? 'met' : 'NOT met';
    console.log(
      `${'uevent -> SSE, 256 partitions'.padEnd(34)} p50 ${ours.p50.toFixed(1)} ms, p99 ${ours.p99.toFixed(1)} ms, lost ${ours.lost} (systemd-udevd running${udevd.started ? ', started by the bench' : ''}; kernel uevent seen by a udevadm monitor to the SSE frame read, both at nice -20; devgated at nice ${shippedNice()} as its unit runs it; load ${os.loadavg()[0].toFixed(2)})  (target p99 <= 20 ms, zero lost: ${verdict})`,
    );
    console.log(
      `${'  floor: a bare reader'.padEnd(34)} p50 ${floor.p50.toFixed(1)} ms, p99 ${floor.p99.toFixed(1)} ms, lost ${floor.lost} (a lower bound: Node at devgated's nice reading the udevadm monitor devgated reads and only saying which device came, the same burst just before)`,
    );
    for (const [who, result] of [
      ['devgated', ours],
      ['the bare reader', floor],
    ]) {
      console.log(
        `${`  ${who} during its burst`.padEnd(34)} on a CPU ${result.runMs.toFixed(1)} ms, runnable but waiting for one ${result.waitMs.toFixed(1)} ms (main thread, the kernel's schedstat: while it waits no event is handled)`,
      );
    }
  } finally {
    await udevd.stop();
    os.setPriority(priority);
  }
}

/** An image file with a GPT of PARTITIONS_PER_DISK 1 MiB partitions. */
function partitionedImage(image) {
  fs.writeFileSync(image, '');
  fs.truncateSync(image, (PARTITIONS_PER_DISK + 32) * 1024 * 1024);
  const table = [
    'label: gpt',
    `table-length: ${PARTITIONS_PER_DISK}`,
    ...Array.from({ length: PARTITIONS_PER_DISK }, () => 'size=1M, type=L'),
  ];
  execFileSync('sfdisk', ['--quiet', image], { input: table.join('\n') + '\n' });
  return image;
}

/**
 * The images' partitions added at once, timed from the kernel event (read by a reference monitor)
 * to the moment `subscribe`'s reader says the device came.
 */
async function burst(images, subscribe) {
  const uevents = new Map();
  const seen = new Map();
  // The reference clock: the kernel stamps no uevent, so the time this monitor reads one stands for it
  // (a reference delayed by the burst's load would make the latency look smaller than it is).
  const monitor = spawn('udevadm', ['monitor', '--kernel', '--property', '--subsystem-match=block'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const monitoring = new Promise((resolve) => {
    eachPiece(monitor.stdout, '\n\n', (block, now) => {
      resolve(); // the header, then events
      if (/ACTION=add/.test(block)) {
        const name = /DEVNAME=(?:\/dev\/)?(\S+)/.exec(block)?.[1];
        if (name && !uevents.has(name)) uevents.set(name, now);
      }
    });
  });
  let reader;
  const loops = [];
  try {
    // udevd done with whatever came before (the other reader's burst and its removal).
    if (fs.existsSync('/run/udev/control')) execFileSync('udevadm', ['settle', '--timeout=60']);
    await monitoring;
    reader = await subscribe(seen);
    for (const image of images) {
      loops.push(execFileSync('losetup', ['-f', '--show', image], { encoding: 'utf8' }).trim());
    }
    const before = schedStat(reader.pid);
    // Both disks' partitions at once, without blocking this process: it timestamps the uevents.
    // partx as a user runs it, at nice 0 (20 above this process's -20).
    await Promise.all(loops.map((loop) => run('nice', ['-n', '20', 'partx', '-a', loop])));
    const partitions = loops.flatMap((loop) =>
      Array.from({ length: PARTITIONS_PER_DISK }, (_, i) => `${path.basename(loop)}p${i + 1}`),
    );
    const deadline = Date.now() + 10_000;
    while (partitions.some((p) => !seen.has(p)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const after = schedStat(reader.pid);
    const latencies = partitions
      .filter((p) => seen.has(p) && uevents.has(p))
      .map((p) => seen.get(p) - uevents.get(p))
      .sort((a, b) => a - b);
    return {
      p50: latencies[Math.floor(latencies.length * 0.5)] ?? NaN,
      p99: latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))] ?? NaN,
      lost: partitions.filter((p) => !seen.has(p)).length,
      runMs: after.runMs - before.runMs,
      waitMs: after.waitMs - before.waitMs,
    };
  } finally {
    monitor.kill();
    // Busy partitions (a probe has them open) refuse to go at first: a detached loop device would
    // keep them, so try until they are gone.
    for (const loop of loops) {
      removePartitions(loop);
      execFileSync('losetup', ['-d', loop]);
    }
    await reader?.stop();
  }
}

/** devgated, as its unit runs it, and a client of its event stream: `seen` gets each added device. */
async function devgatedReader(dir, seen, startDaemon) {
  const daemon = await startDaemon(dir, 'sse', { dom0: { source: 'local' } });
  const sse = http.get({ socketPath: daemon.socket, path: '/v1/events' }, (response) =>
    eachPiece(response, '\n\n', (frame, now) => {
      const data = /^data: (.*)$/m.exec(frame)?.[1];
      if (!data) return;
      const event = JSON.parse(data);
      if (event.type === 'device' && event.event === 'added' && !seen.has(event.device.portId))
        seen.set(event.device.portId, now);
    }),
  );
  // devgated's start (its first tree, its monitor's header) is over well before this.
  await new Promise((resolve) => setTimeout(resolve, 500));
  return {
    pid: daemon.pid,
    stop: async () => {
      sse.destroy();
      await daemon.stop();
    },
  };
}

/** uevent-floor-reader.cjs at devgated's priority, once its monitor listens. */
async function bareReader(seen, nice) {
  const child = spawn(process.execPath, [path.join(__dirname, 'uevent-floor-reader.cjs')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  os.setPriority(child.pid, nice);
  await new Promise((resolve, reject) => {
    eachPiece(child.stdout, '\n', (name, now) => {
      if (name === 'ready') resolve();
      else if (!seen.has(name)) seen.set(name, now);
    });
    child.on('exit', (code) => reject(new Error(`the floor's reader exited (${code}) before it listened`)));
  });
  return {
    pid: child.pid,
    stop: () => new Promise((resolve) => (child.once('exit', resolve), child.kill('SIGTERM'))),
  };
}

/** Calls `onPiece` with each `separator`-ended piece of a text stream, and when its chunk was read. */
function eachPiece(stream, separator, onPiece) {
  let pending = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk) => {
    const now = performance.now();
    pending += chunk;
    let end;
    while ((end = pending.indexOf(separator)) >= 0) {
      const piece = pending.slice(0, end);
      pending = pending.slice(end + separator.length);
      onPiece(piece, now);
    }
  });
}

/** A thread's time on a CPU and waiting in a run queue for one (/proc/PID/task/TID/schedstat, ns). */
function schedStat(pid, tid = pid) {
  const [run, wait] = fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ').map(Number);
  return { runMs: run / 1e6, waitMs: wait / 1e6 };
}

function run(command, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'ignore' });
    child.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`${command} ${args.join(' ')} exited ${code}`)),
    );
  });
}

module.exports = { ueventLatency };
