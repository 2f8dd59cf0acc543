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
const { removePartitions } = require('@devgate/testkit');
const { shipped } = require('./shipped.cjs');
const { usbVmLatency } = require('./usbvm.cjs');
const { median, time } = require('./timing.cjs');
const { rawQmpRound } = require('./raw-qmp.cjs');
const { coldList } = require('./cold-list.cjs');
const { cliAttach } = require('./cli-attach.cjs');
const { ueventLatency } = require('./uevent-burst.cjs');
const http = require('node:http');
const { spawn } = require('node:child_process');

const ROOT = path.join(__dirname, '..');

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 60);
const WARMUP = 5;

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
      const rawRound = await rawQmpRound(qmp, loop);
      const oursAttach = await time(() => manager.attach({ frontend: 'bench', port }));
      const oursDetach = await time(() => manager.detach('bench', port));
      if (i < WARMUP) continue;
      raw.attach.push(rawRound.attach);
      raw.detach.push(rawRound.detach);
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

/**
 * The nice value devgated's systemd unit runs it at (`Nice=`); the benchmarks give it the same, and
 * so does the udevadm monitor it spawns, as under systemd.
 */
function shippedNice() {
  const unit = fs.readFileSync(path.join(ROOT, 'apps/daemon/systemd/devgated.service'), 'utf8');
  return Number(/^Nice=(-?\d+)$/m.exec(unit)?.[1] ?? 0);
}

/** Starts a built devgated as a child process and waits for its socket to answer. */
async function startDaemon(dir, name, backends, env = {}) {
  const socket = path.join(dir, `${name}.sock`);
  const configFile = path.join(dir, `${name}.json`);
  fs.writeFileSync(
    configFile,
    JSON.stringify({
      socket,
      stateDir: path.join(dir, `${name}-state`),
      domains: path.join(dir, 'domains.json'),
      backends,
      access: { users: [], groups: [] },
    }),
  );
  const extra = process.env.BENCH_DAEMON_ARGS ? process.env.BENCH_DAEMON_ARGS.split(' ') : [];
  const daemon = shipped('apps/daemon/bin/devgated.cjs');
  const child = spawn(process.execPath, daemon.argv(['--config', configFile], extra), {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, ...daemon.env, DEVGATE_LOG_LEVEL: 'warn', ...env },
  });
  // Before it spawns anything: what it spawns (its udevadm monitor) starts at the same priority.
  os.setPriority(child.pid, shippedNice());
  for (let i = 0; i < 300; i++) {
    if (fs.existsSync(socket)) {
      try {
        await get(socket, '/v1/health');
        return {
          socket,
          pid: child.pid,
          stop: () => new Promise((resolve) => (child.once('exit', resolve), child.kill('SIGTERM'))),
        };
      } catch {
        // not listening yet
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  child.kill('SIGKILL');
  throw new Error('devgated did not start');
}

function get(socketPath, route) {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath, path: route }, (response) => {
        const chunks = [];
        response.on('data', (c) => chunks.push(c));
        response.on('end', () => resolve(Buffer.concat(chunks)));
      })
      .on('error', reject);
  });
}

function run(command, args, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'ignore', env });
    child.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`${command} ${args.join(' ')} exited ${code}`)),
    );
  });
}

/** `devgate list` through devgated against starting Node itself: what a CLI call costs. */
async function cliStartup(dir) {
  const daemon = await startDaemon(dir, 'cli', { dom0: { source: 'local' } });
  try {
    const env = { ...process.env, DEVGATE_SOCKET: daemon.socket };
    const cli = shipped('apps/cli/bin/devgate.cjs');
    const ours = [];
    const node = [];
    for (let i = 0; i < ROUNDS + WARMUP; i++) {
      const a = await time(() => run(process.execPath, cli.argv(['list']), env));
      const b = await time(() => run(process.execPath, ['-e', '0'], env));
      if (i < WARMUP) continue;
      ours.push(a);
      node.push(b);
    }
    report('devgate list (through devgated)', median(ours), median(node), 'node -e 0', 1.15);
  } finally {
    await daemon.stop();
  }
  // Of which devgated's own answer to the CLI's request (`GET /v1/devices?`), in-process client.
  for (const [cache, label] of API_CACHE_MODES.slice(0, 2)) {
    const answering = await startDaemon(
      dir,
      `cli-${cache}`,
      { dom0: { source: 'local' } },
      { DEVGATE_API_CACHE: cache },
    );
    try {
      const { warm, body } = await timeList(answering.socket, '/v1/devices?');
      const count = JSON.parse(body).devices.length;
      console.log(
        `${'  devgated answer, this host'.padEnd(34)} ${warm.toFixed(3)} ms median (${count} devices, ${label})`,
      );
    } finally {
      await answering.stop();
    }
  }
}

/**
 * What devgated's list answer is timed with (`DEVGATE_API_CACHE`, ADR 0015): the answer kept since
 * the last list (after a device event, only the chunks of 256 devices with a changed one are made
 * again); every chunk made again from each device's cached JSON; every device serialized again, as
 * with no cache at all.
 */
const API_CACHE_MODES = [
  ['answer', 'nothing changed since the last list: the kept answer'],
  ['device', "answer and its chunks invalidated: assembled from each device's cached JSON"],
  ['none', 'all caches invalidated: every device serialized'],
];

/**
 * The first answer, then the median of ROUNDS more (one connection each, as the CLI makes), each
 * from request to last byte, timed by a small client process of its own that only counts the bytes:
 * in this (big) bench process, gathering 5 MB answers costs garbage collections that are not the
 * daemon's. The body is fetched once more, untimed.
 */
async function timeList(socket, route) {
  const client = `
    const http = require('http');
    const drain = () => new Promise((resolve, reject) => http.get({ socketPath: ${JSON.stringify(socket)}, path: ${JSON.stringify(route)} }, (r) => {
      let bytes = 0; r.on('data', (c) => (bytes += c.length)); r.on('end', () => resolve(bytes));
    }).on('error', reject));
    const time = async () => { const start = process.hrtime.bigint(); await drain(); return Number(process.hrtime.bigint() - start) / 1e6; };
    (async () => {
      const first = await time();
      const warm = [];
      for (let i = 0; i < ${ROUNDS}; i++) warm.push(await time());
      warm.sort((a, b) => a - b);
      process.stdout.write(JSON.stringify({ first, warm: warm[Math.floor(warm.length / 2)] }));
    })();`;
  const timed = JSON.parse(execFileSync(process.execPath, ['-e', client], { encoding: 'utf8' }));
  return { ...timed, body: await get(socket, route) };
}

/**
 * The floor under any API answer of these bytes: a bare node:http server in its own process sending
 * the same buffer, timed by the same client. A lower bound: no routing, no validation, no devgate.
 */
async function transferFloor(dir, name, body) {
  const file = path.join(dir, `${name}.body`);
  fs.writeFileSync(file, body);
  const socket = path.join(dir, `${name}.floor.sock`);
  const script = `
    const body = require('fs').readFileSync(${JSON.stringify(file)});
    require('http').createServer((q, r) => r.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length }).end(body))
      .listen(${JSON.stringify(socket)}, () => process.stdout.write('ready\\n'));`;
  const server = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve) => server.stdout.once('data', resolve));
  try {
    return (await timeList(socket, '/')).warm;
  } finally {
    await new Promise((resolve) => (server.once('exit', resolve), server.kill('SIGTERM')));
  }
}

/** One API list call with 10,000 devices, from a generated recording. */
async function bigList(dir) {
  const recording = path.join(dir, 'big.txt');
  const records = [];
  for (let i = 0; i < 10_000; i++) {
    records.push(
      [
        `P: /devices/virtual/block/loop${i}`,
        `N: loop${i}`,
        'E: SUBSYSTEM=block',
        `E: DEVNAME=/dev/loop${i}`,
        'E: DEVTYPE=disk',
        'E: MAJOR=7',
        `E: MINOR=${i}`,
        'E: ID_FS_TYPE=ext4',
        `E: ID_FS_LABEL=DISK${i}`,
      ].join('\n'),
    );
  }
  fs.writeFileSync(recording, records.join('\n\n') + '\n');
  for (const [cache, label] of API_CACHE_MODES.slice(0, 2)) {
    const daemon = await startDaemon(dir, `big-${cache}`, { dom0: { recording } }, { DEVGATE_API_CACHE: cache });
    try {
      const { first, warm, body } = await timeList(daemon.socket, '/v1/devices?class=block');
      const count = JSON.parse(body).devices.length;
      const verdict = warm < 5 ? 'met' : 'NOT met';
      console.log(
        `${'API list, 10,000 block devices'.padEnd(34)} first ${first.toFixed(2)} ms, then median ${warm.toFixed(2)} ms (${count} devices, ${(body.length / 1e6).toFixed(1)} MB; ${label})  (target < 5 ms: ${verdict})`,
      );
    } finally {
      await daemon.stop();
    }
  }
}

/** A `udevadm info --export-db` style recording of `count` devices made by `record(i)`. */
function writeRecording(file, count, record) {
  fs.writeFileSync(file, Array.from({ length: count }, (_, i) => record(i).join('\n')).join('\n\n') + '\n');
}

function rssMiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) / 1024;
}

/** 10,000 USB devices against 258 block devices, both listed through the API; and the daemon's RSS. */
async function usbList(dir) {
  const usb = path.join(dir, 'usb10k.txt');
  writeRecording(usb, 10_000, (i) => {
    const bus = 1 + Math.floor(i / 100);
    const port = `${bus}-${1 + (i % 100)}`;
    return [
      `P: /devices/pci0000:00/0000:00:14.0/usb${bus}/${port}`,
      'E: SUBSYSTEM=usb',
      'E: DEVTYPE=usb_device',
      `E: DEVNAME=/dev/bus/usb/${String(bus).padStart(3, '0')}/${String((i % 100) + 2).padStart(3, '0')}`,
      'E: ID_VENDOR_ID=0461',
      'E: ID_MODEL_ID=0010',
      'E: ID_VENDOR_ENC=Primax',
      'E: ID_MODEL_ENC=USB\\x20Keyboard',
      `E: ID_SERIAL_SHORT=SN${i}`,
      'E: ID_USB_INTERFACES=:030101:030000:',
      `E: BUSNUM=${String(bus).padStart(3, '0')}`,
      `E: DEVNUM=${String((i % 100) + 2).padStart(3, '0')}`,
    ];
  });
  const block = path.join(dir, 'block258.txt');
  writeRecording(block, 258, (i) => [
    `P: /devices/virtual/block/loop${i}`,
    'E: SUBSYSTEM=block',
    `E: DEVNAME=/dev/loop${i}`,
    'E: DEVTYPE=disk',
    'E: MAJOR=7',
    `E: MINOR=${i}`,
    'E: ID_FS_TYPE=ext4',
  ]);
  const measure = async (name, recording, devclass, cache) => {
    const daemon = await startDaemon(dir, `${name}-${cache}`, { dom0: { recording } }, { DEVGATE_API_CACHE: cache });
    try {
      const listed = await timeList(daemon.socket, `/v1/devices?class=${devclass}`);
      // Settled: what a daemon that has answered lists keeps, not its start's garbage.
      await new Promise((resolve) => setTimeout(resolve, 1000));
      return { ...listed, count: JSON.parse(listed.body).devices.length, rss: rssMiB(daemon.pid) };
    } finally {
      await daemon.stop();
    }
  };
  console.log(
    `devgated as shipped: ${shipped('apps/daemon/bin/devgated.cjs').line}; API lists timed from request to last byte, median of ${ROUNDS}; load ${os.loadavg()[0].toFixed(2)}`,
  );
  let rss;
  for (const [cache, label] of API_CACHE_MODES) {
    const usbResult = await measure('usb10k', usb, 'usb', cache);
    const blockResult = await measure('block258', block, 'block', cache);
    console.log(`  ${label}:`);
    report(
      `API list, ${usbResult.count} USB devices`,
      usbResult.warm,
      blockResult.warm,
      `${blockResult.count} block`,
      1.5,
    );
    if (cache === 'answer') {
      rss = { usb: usbResult.rss, block: blockResult.rss };
      const usbFloor = await transferFloor(dir, 'usb10k', usbResult.body);
      const blockFloor = await transferFloor(dir, 'block258', blockResult.body);
      report(`  floor: same bytes, bare node:http`, usbFloor, blockFloor, `${blockResult.count} block`);
      console.log(
        `${''.padEnd(34)} (a lower bound: ${(usbResult.body.length / 1e6).toFixed(2)} MB against ${(blockResult.body.length / 1e6).toFixed(2)} MB; devgated adds ${(usbResult.warm - usbFloor).toFixed(2)} ms and ${(blockResult.warm - blockFloor).toFixed(2)} ms)`,
      );
    }
  }
  const verdict = rss.usb <= 90 ? 'met' : 'NOT met';
  console.log(
    `${'devgated RSS with 10,000 USB'.padEnd(34)} ${rss.usb.toFixed(1)} MiB (258 block: ${rss.block.toFixed(1)} MiB; ${(((rss.usb - rss.block) * 1048576) / (10_000 - 258)) | 0} bytes per device more)  (target <= 90 MiB: ${verdict})`,
  );
}

/**
 * Attach/detach of a block device through devgate's libvirt connector (the kernel's checks, the data
 * path, metadata and the read-back included) against `virsh attach-device` / `detach-device` of the
 * same disk XML, each against its own domain of one private libvirtd (started here in its own mount
 * namespace, as the tests do); rounds alternate so both see the same load.
 */
async function libvirtAttach(dir) {
  const { libvirtModule, labDomainXml, planBlockDisk } = require('@devgate/backend-libvirt');
  const sandbox = path.join(dir, 'libvirtd');
  fs.mkdirSync(sandbox);
  const script = path.join(ROOT, 'packages/backend-libvirt/src/testing/private-libvirtd.sh');
  const libvirtd = spawn('bash', [script, sandbox], { stdio: 'ignore', detached: true });
  const uri = `qemu:///system?socket=${sandbox}/sock/libvirt-sock`;
  const virsh = (...args) => execFileSync('virsh', ['-q', '-c', uri, ...args], { encoding: 'utf8', stdio: 'pipe' });
  const image = path.join(dir, 'libvirt-disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 16 * 1024 * 1024);
  const loop = execFileSync('losetup', ['-f', '--show', image], { encoding: 'utf8' }).trim();
  let kernel;
  try {
    for (let tries = 0; ; tries++) {
      try {
        virsh('list');
        break;
      } catch (error) {
        if (tries > 300) throw error;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    for (const name of ['bench-dg', 'bench-virsh']) {
      const file = path.join(sandbox, `${name}.xml`);
      fs.writeFileSync(file, labDomainXml(name, { lab: false }));
      virsh('define', file);
      virsh('start', name);
    }
    // The peer: the XML devgate would write for this disk, attached and detached by virsh.
    const peerPort = { devclass: 'block', backend: 'peer', portId: path.basename(loop) };
    const spec = { kind: 'block', params: { readOnly: false, devtype: 'disk', bus: 'usb', path: loop }, options: {} };
    const peerXml = path.join(sandbox, 'peer-disk.xml');
    fs.writeFileSync(peerXml, planBlockDisk(peerPort, spec, 'xvdi', 'sdb').xml);
    const libvirt = libvirtModule({ uris: [uri] });
    kernel = new Kernel().load(blockModule, libvirt);
    kernel.registerSource(new LocalHostSource({ hotplug: 'static' }));
    const manager = kernel.start();
    await libvirt.ready();
    const port = { devclass: 'block', backend: 'dom0', portId: path.basename(loop) };
    const raw = { attach: [], detach: [] };
    const ours = { attach: [], detach: [] };
    const rounds = Math.min(ROUNDS, 40);
    for (let i = 0; i < rounds + WARMUP; i++) {
      const rawAttach = await time(() =>
        run('virsh', ['-q', '-c', uri, 'attach-device', 'bench-virsh', peerXml, '--live']),
      );
      const rawDetach = await time(() =>
        run('virsh', ['-q', '-c', uri, 'detach-device', 'bench-virsh', peerXml, '--live']),
      );
      const oursAttach = await time(() => manager.attach({ frontend: 'bench-dg', port }));
      const oursDetach = await time(() => manager.detach('bench-dg', port));
      if (i < WARMUP) continue;
      raw.attach.push(rawAttach);
      raw.detach.push(rawDetach);
      ours.attach.push(oursAttach);
      ours.detach.push(oursDetach);
    }
    // Both sides really did it: nothing is left attached in either domain.
    for (const name of ['bench-dg', 'bench-virsh']) {
      if (virsh('domblklist', name).includes(loop)) throw new Error(`${loop} is still attached to ${name}`);
    }
    report('libvirt block attach (usb)', median(ours.attach), median(raw.attach), 'virsh   ', 1.2);
    report('libvirt block detach (usb)', median(ours.detach), median(raw.detach), 'virsh   ', 1.2);
  } finally {
    kernel?.dispose();
    for (const name of ['bench-dg', 'bench-virsh']) {
      try {
        virsh('destroy', name);
      } catch {
        // not running
      }
    }
    try {
      process.kill(Number(fs.readFileSync(path.join(sandbox, 'libvirtd.pid'), 'utf8')), 'SIGTERM');
    } catch {
      libvirtd.kill('SIGTERM');
    }
    await new Promise((resolve) => (libvirtd.exitCode === null ? libvirtd.once('exit', resolve) : resolve()));
    removePartitions(loop);
    execFileSync('losetup', ['-d', loop]);
  }
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('the benchmarks need root (loop devices, QEMU)');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-bench-'));
  console.log(
    `devgate benchmarks: median of ${ROUNDS} rounds each, ${os.cpus().length} cores, node ${process.version}`,
  );
  try {
    const only = process.env.BENCH_ONLY;
    const benches = {
      attachLatency,
      libvirtAttach,
      coldList,
      cliStartup,
      cliAttach: (dir) => cliAttach(dir, { startDaemon }),
      bigList,
      ueventLatency: (dir) => ueventLatency(dir, { startDaemon, shippedNice }),
      usbList,
      usbVmLatency,
    };
    for (const [name, bench] of Object.entries(benches)) if (!only || only === name) await bench(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
