'use strict';
// The USB VM (ADR 0011), with real guests: sys-usb (devgate usbvm create --emulated) and a frontend
// `work` (lab up --os). Two figures, each against the same step done by hand in the same run:
//
//  - device_add of a stick in sys-usb -> sys-usb:sda1 listed by devgate (its agent, the channel,
//    devgate's drivers), against device_add -> the partition's own uevent in sys-usb, as the lab's
//    agent reports it to the host (what a hand-made script watching the guest would see);
//  - qvm-block attach work sys-usb:sda1 (the kernel's checks, the agent's export, the QMP commands)
//    -> the disk's add uevent in work, against the raw blockdev-add (nbd) + device_add usb-storage of
//    an export already made -> the same uevent.
//
// Rounds: $BENCH_USBVM_ROUNDS (default 8); the guests run under TCG here, so a round takes seconds.
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { median } = require('./timing.cjs');

const ROOT = path.join(__dirname, '..');

function report(name, oursMs, peerMs, peerName) {
  console.log(
    `${name.padEnd(34)} devgate ${oursMs.toFixed(1).padStart(8)} ms   ${peerName} ${peerMs.toFixed(1).padStart(8)} ms   ratio ${(oursMs / peerMs).toFixed(2)}x`,
  );
}

async function usbVmLatency(dir) {
  const { Kernel } = require('@devgate/core');
  const { blockModule } = require('@devgate/driver-block');
  const { usbModule } = require('@devgate/driver-usb');
  const { qemuModule, readRegistrySync } = require('@devgate/backend-qemu');
  const { AgentSource } = require('@devgate/backend-agent');
  const { labOsUp, labDownWithGuests, openGuestSession, guestDir } = require('@devgate/guest-lab');
  const { createEmulatedUsbVm } = require(path.join(ROOT, 'apps/cli/dist/usbvm.js'));
  const rounds = Number(process.env.BENCH_USBVM_ROUNDS ?? 8);
  const registryFile = path.join(dir, 'usbvm-domains.json');
  const stateDir = path.join(dir, 'usbvm-lab');
  const image = path.join(dir, 'usbvm-stick.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 32 * 1024 * 1024);
  execFileSync('sfdisk', ['-q', image], { input: 'label: dos\nstart=2048, type=83\n' });
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'BENCH', '-E', 'offset=1048576', image, '30M']);

  let kernel;
  const sessions = [];
  try {
    await Promise.all([createEmulatedUsbVm({ registryFile, stateDir }), labOsUp(['work'], { registryFile, stateDir })]);
    const registry = readRegistrySync(registryFile);
    const agent = registry.domains['sys-usb'].agent;
    const source = new AgentSource({ backend: 'sys-usb', control: agent.control, exportPorts: agent.exports });
    kernel = new Kernel().load(blockModule, usbModule, qemuModule({ registryFile }));
    kernel.registerSource(source);
    const manager = kernel.start();
    source.incidents$.subscribe((incident) => process.env.BENCH_VERBOSE && console.log('usbvm: agent', incident));
    if (!(await source.whenReady(60_000))) throw new Error('the agent of sys-usb sent no tree within 60 s');
    const usbvm = await openGuestSession('sys-usb', guestDir(registry.domains['sys-usb'], 'sys-usb'));
    const work = await openGuestSession('work', guestDir(registry.domains.work, 'work'));
    sessions.push(usbvm, work);
    const port = { devclass: 'block', backend: 'sys-usb', portId: 'sda1' };
    const listed = (present) =>
      new Promise((resolve, reject) => {
        if (Boolean(manager.get(port)) === present) return resolve(Date.now());
        const timer = setTimeout(() => {
          sub.unsubscribe();
          reject(new Error(`sys-usb:sda1 not ${present ? 'listed' : 'gone'} within 30 s`));
        }, 30_000);
        const sub = manager.events$.subscribe(() => {
          if (Boolean(manager.get(port)) === present) {
            clearTimeout(timer);
            sub.unsubscribe();
            resolve(Date.now());
          }
        });
      });
    const step = (what) => process.env.BENCH_VERBOSE && console.log(`usbvm: ${new Date().toISOString()} ${what}`);

    const listing = { ours: [], raw: [] };
    const attach = { ours: [], raw: [] };
    for (let i = 0; i < rounds + 1; i++) {
      // -- device_add in sys-usb -> listed, and -> the raw uevent in sys-usb (both from one plug)
      step(`round ${i}: plug`);
      const mark = await usbvm.ueventMark();
      const started = Date.now();
      const raw = usbvm
        .waitForUevent({ ACTION: 'add', SUBSYSTEM: 'block', DEVTYPE: 'partition' }, { since: mark, timeoutMs: 30_000 })
        .then(() => Date.now());
      const ours = listed(true);
      await usbvm.plug({ kind: 'usb-storage', image, id: 'stick1', serial: 'BENCH0001' });
      const [rawAt, oursAt] = await Promise.all([raw, ours]);

      step('attach');
      // -- qvm-block attach (the kernel, the export, QMP) -> the disk in work
      let workMark = await work.ueventMark();
      let t0 = Date.now();
      await manager.attach({ frontend: 'work', port });
      await work.waitForUevent(
        { ACTION: 'add', SUBSYSTEM: 'block', DEVTYPE: 'disk' },
        { since: workMark, timeoutMs: 30_000 },
      );
      const oursAttach = Date.now() - t0;
      workMark = await work.ueventMark();
      await manager.detach('work', port);
      await work.waitForUevent(
        { ACTION: 'remove', SUBSYSTEM: 'block', DEVTYPE: 'disk' },
        { since: workMark, timeoutMs: 30_000 },
      );

      step('raw attach');
      // -- the same export, attached by hand on work's lab monitor: blockdev-add nbd + device_add
      const device = manager.get(port);
      const spec = await source.dataPath(device, { kind: 'block', params: { readOnly: false }, options: {} });
      workMark = await work.ueventMark();
      t0 = Date.now();
      await work.qmp.execute('blockdev-add', {
        driver: 'nbd',
        'node-name': 'benchnbd',
        server: { type: 'unix', path: spec.params.nbdSocket },
        export: spec.params.nbdExport,
        'read-only': false,
      });
      await work.qmp.execute('device_add', {
        driver: 'usb-storage',
        id: 'benchstick',
        drive: 'benchnbd',
        bus: 'xhci.0',
      });
      await work.waitForUevent(
        { ACTION: 'add', SUBSYSTEM: 'block', DEVTYPE: 'disk' },
        { since: workMark, timeoutMs: 30_000 },
      );
      const rawAttach = Date.now() - t0;
      const deleted = work.qmp.waitForEvent('DEVICE_DELETED', (e) => e.data?.device === 'benchstick', 10_000);
      await work.qmp.execute('device_del', { id: 'benchstick' });
      await deleted;
      await work.qmp.execute('blockdev-del', { 'node-name': 'benchnbd' });

      step('unplug');
      await usbvm.unplug('stick1');
      await listed(false);
      if (i === 0) continue; // warm-up
      listing.raw.push(rawAt - started);
      listing.ours.push(oursAt - started);
      attach.ours.push(oursAttach);
      attach.raw.push(rawAttach);
    }
    report('usbvm: device_add -> listed', median(listing.ours), median(listing.raw), 'uevent  ');
    report('usbvm: attach -> disk in frontend', median(attach.ours), median(attach.raw), 'raw QMP ');
  } finally {
    for (const session of sessions) await session.close().catch(() => undefined);
    kernel?.dispose();
    await labDownWithGuests(undefined, { registryFile }).catch(() => undefined);
  }
}

module.exports = { usbVmLatency };
