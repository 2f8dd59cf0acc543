// `qvm-block attach` and `detach` end to end: a fresh CLI process each time, through a running
// devgated (its API, the SQLite journal, the QMP commands to a lab VM, the read-back), against what
// no CLI can do with less: `node -e 0` plus the raw QMP round trips of the same attachment sent by an
// open connection to a second VM (a lower bound). Rounds alternate so both see the same load.
// Required by bench/run.cjs (BENCH_ONLY=cliAttach), which passes its devgated starter.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { median, timeProcess } = require('./timing.cjs');
const { rawQmpRound } = require('./raw-qmp.cjs');
const { QmpClient, labUp, labDown } = require('@devgate/backend-qemu');
const { removePartitions } = require('@devgate/testkit');
const { shipped } = require('./shipped.cjs');

const ROUNDS = Math.min(Number(process.env.BENCH_ROUNDS ?? 30), 30);
const WARMUP = 3;

async function cliAttach(dir, { startDaemon }) {
  // devgated's VM in the registry it reads; the raw side's VM in one of its own (a QMP socket serves
  // one client, and devgated connects to every VM it knows).
  const registryFile = path.join(dir, 'domains.json');
  const rawRegistry = path.join(dir, 'cli-raw-domains.json');
  const stateDir = path.join(dir, 'cli-lab');
  const loops = [];
  let daemon;
  let qmp;
  try {
    await labUp(['bench-cli'], { registryFile, stateDir });
    const [rawVm] = await labUp(['bench-cli-raw'], { registryFile: rawRegistry, stateDir });
    for (const n of [0, 1]) {
      const image = path.join(dir, `cli-disk${n}.img`);
      fs.writeFileSync(image, '');
      fs.truncateSync(image, 16 * 1024 * 1024);
      loops.push(execFileSync('losetup', ['-f', '--show', image], { encoding: 'utf8' }).trim());
    }
    const [loop, rawLoop] = loops;
    daemon = await startDaemon(dir, 'cli-attach', { dom0: { source: 'local' } });
    qmp = await QmpClient.connect(rawVm.socket);
    const env = { ...process.env, DEVGATE_SOCKET: daemon.socket, DEVGATE_DOMAINS: registryFile };
    const qvmBlock = shipped('apps/cli/bin/qvm-block.cjs');
    const device = `dom0:${path.basename(loop)}`;
    const times = { attach: [], detach: [], node: [], rawAttach: [], rawDetach: [] };
    for (let i = 0; i < ROUNDS + WARMUP; i++) {
      const attach = (await timeProcess(process.execPath, qvmBlock.argv(['attach', 'bench-cli', device]), env)).ms;
      const detach = (await timeProcess(process.execPath, qvmBlock.argv(['detach', 'bench-cli', device]), env)).ms;
      const node = (await timeProcess(process.execPath, ['-e', '0'], env)).ms;
      const raw = await rawQmpRound(qmp, rawLoop);
      if (i < WARMUP) continue;
      times.attach.push(attach);
      times.detach.push(detach);
      times.node.push(node);
      times.rawAttach.push(raw.attach);
      times.rawDetach.push(raw.detach);
    }
    const [attach, detach, node, rawAttach, rawDetach] = Object.values(times).map(median);
    console.log(
      `qvm-block attach/detach end to end: a fresh CLI process through devgated to a lab VM, median of ${ROUNDS}; load ${os.loadavg()[0].toFixed(2)}`,
    );
    const line = (name, ours, raw) =>
      console.log(
        `  ${name.padEnd(32)} devgate ${ours.toFixed(1).padStart(7)} ms   node -e 0 + raw QMP ${(node + raw).toFixed(1).padStart(7)} ms (${node.toFixed(1)} + ${raw.toFixed(1)}, a lower bound)   ratio ${(ours / (node + raw)).toFixed(2)}x`,
      );
    line('qvm-block attach (usb-storage)', attach, rawAttach);
    line('qvm-block detach', detach, rawDetach);
  } finally {
    await qmp?.close();
    await daemon?.stop();
    await labDown(undefined, { registryFile });
    await labDown(undefined, { registryFile: rawRegistry });
    for (const loop of loops) {
      removePartitions(loop);
      execFileSync('losetup', ['-d', loop]);
    }
  }
}

module.exports = { cliAttach };
