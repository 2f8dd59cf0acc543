#!/usr/bin/env node
// `npm run bench`: devgate against its peers, measured in the same run on the same machine, printed
// as ratios. Needs root, QEMU and util-linux (as the tests do); runs on the built packages.
'use strict';
require('reflect-metadata');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { Kernel } = require('@devgate/core');
const { blockModule } = require('@devgate/driver-block');
const { LocalHostSource } = require('@devgate/host');
const { QmpClient, labUp, labDown, qemuModule } = require('@devgate/backend-qemu');

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 60);
const WARMUP = 5;

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function time(fn) {
  const start = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

function report(name, oursMs, peerMs, peerName, target) {
  const ratio = oursMs / peerMs;
  const verdict =
    target === undefined ? '' : ratio <= target ? `  (target <= ${target}x: met)` : `  (target <= ${target}x: NOT met)`;
  console.log(
    `${name.padEnd(34)} devgate ${oursMs.toFixed(3).padStart(8)} ms   ${peerName} ${peerMs.toFixed(3).padStart(8)} ms   ratio ${ratio.toFixed(2)}x${verdict}`,
  );
}

/**
 * Attach/detach through the kernel vs the raw QMP round trips the same attachment needs, as a
 * hand-written script would send them on one open connection. A QMP socket serves one client, so
 * each side has its own VM; rounds alternate between them so both see the same machine load.
 */
async function attachLatency(dir) {
  const registryFile = path.join(dir, 'domains.json');
  const [, peerVm] = await labUp(['bench', 'bench-raw'], { registryFile, stateDir: path.join(dir, 'lab') });
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 16 * 1024 * 1024);
  const loop = execFileSync('losetup', ['-f', '--show', image], { encoding: 'utf8' }).trim();
  const qmp = await QmpClient.connect(peerVm.socket);
  const kernel = new Kernel().load(blockModule, qemuModule({ registryFile }));
  kernel.registerSource(new LocalHostSource({ hotplug: 'static' }));
  const manager = kernel.start();
  const port = { devclass: 'block', backend: 'dom0', portId: path.basename(loop) };
  const raw = { attach: [], detach: [] };
  const ours = { attach: [], detach: [] };
  try {
    for (let i = 0; i < ROUNDS + WARMUP; i++) {
      const rawAttach = await time(async () => {
        await qmp.execute('blockdev-add', {
          driver: 'host_device',
          'node-name': 'raw',
          filename: loop,
          'read-only': false,
        });
        await qmp.execute('device_add', {
          driver: 'usb-storage',
          id: 'rawdev',
          drive: 'raw',
          bus: 'xhci.0',
          removable: true,
        });
      });
      const rawDetach = await time(async () => {
        const deleted = qmp.waitForEvent('DEVICE_DELETED', (e) => e.data?.device === 'rawdev', 5000);
        await qmp.execute('device_del', { id: 'rawdev' });
        await deleted;
        await qmp.execute('blockdev-del', { 'node-name': 'raw' });
      });
      const oursAttach = await time(() => manager.attach({ frontend: 'bench', port }));
      const oursDetach = await time(() => manager.detach('bench', port));
      if (i < WARMUP) continue;
      raw.attach.push(rawAttach);
      raw.detach.push(rawDetach);
      ours.attach.push(oursAttach);
      ours.detach.push(oursDetach);
    }
    report('block attach (usb-storage)', median(ours.attach), median(raw.attach), 'raw QMP', 1.5);
    report('block detach (DEVICE_DELETED)', median(ours.detach), median(raw.detach), 'raw QMP', 1.5);
  } finally {
    kernel.dispose();
    await qmp.close();
    execFileSync('losetup', ['-d', loop]);
    await labDown(undefined, { registryFile });
  }
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('the benchmarks need root (loop devices, QEMU)');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-bench-'));
  console.log(
    `devgate benchmarks: median of ${ROUNDS} rounds each, ${os.cpus().length} cores, node ${process.version}`,
  );
  try {
    await attachLatency(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
