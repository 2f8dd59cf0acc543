import * as path from 'node:path';
import { type Guest, bootGuest } from '@devgate/guest-lab';

// Real input devices exist only in guests here (this host has no input subsystem): a lab guest with
// QEMU's emulated usb-kbd, usb-mouse and usb-tablet, real sysfs, real /dev/input/event*, systemd-udevd.
// devgate runs inside it from the host's build (the guest's root is the host's, over 9p).
//
//  1. Classification on a real kernel: udev's ID_INPUT_* answers and devgate's reading of the
//     kernel's bitmaps agree, device for device.
//  2. Passthrough: the guest acts as dom0, with devgated; its keyboard is attached to a nested lab VM
//     (QEMU input-linux). Keys pressed on the outer keyboard (QMP input-send-event) reach the nested
//     QEMU (its input trace shows them); pull the keyboard and plug it back: keys reach it again with
//     no command; detach: they stop, and the guest's own evdev gets them again.
//
// Under TCG on a loaded machine every node start in the guest takes seconds to a minute: the test
// waits for conditions, never for fixed times, with deadlines sized for that.
jest.setTimeout(30 * 60_000);

const ROOT = path.resolve(__dirname, '..', '..', '..');
const DEVGATE = path.join(ROOT, 'apps/cli/bin/devgate.cjs');
const QVM_DEVICE = path.join(ROOT, 'apps/cli/bin/qvm-device.cjs');
const DEVGATED = path.join(ROOT, 'apps/daemon/bin/devgated.cjs');
const DG = '/run/dg';
const ENV =
  `export DEVGATE_DOMAINS=${DG}/domains.json DEVGATE_STATE_DIR=${DG}/state ` +
  `DEVGATE_SOCKET=${DG}/devgate.sock DEVGATE_QEMU=${DG}/qemu-traced; `;
const SLOW = { timeoutMs: 600_000 };

let guest: Guest;

beforeAll(async () => {
  guest = await bootGuest({
    name: 'input-real-kernel',
    devices: [{ kind: 'usb-kbd', id: 'kbd1' }, { kind: 'usb-mouse' }, { kind: 'usb-tablet' }],
    udev: true,
    memoryMb: 768,
    bootTimeoutMs: 600_000,
  });
  process.stdout.write(`input-real-kernel: guest booted in ${guest.bootMs} ms (${guest.accel})\n`);
}, 660_000);

afterAll(async () => {
  await guest?.dispose();
});

/** Presses and releases a key on the guest's keyboard. */
async function press(key: string): Promise<void> {
  await guest.qmp.execute('input-send-event', {
    events: [
      { type: 'key', data: { down: true, key: { type: 'qcode', data: key } } },
      { type: 'key', data: { down: false, key: { type: 'qcode', data: key } } },
    ],
  });
}

/** Polls a shell condition in the guest (cheap commands only) until it holds. */
async function until(what: string, command: string, timeoutMs = 600_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await guest.exec(['sh', '-c', command], SLOW);
    if (result.code === 0) return result.stdout;
    if (Date.now() > deadline)
      throw new Error(`guest: no ${what} within ${timeoutMs} ms (last: ${result.stdout}${result.stderr})`);
  }
}

interface Classified {
  port: string;
  withUdev: string;
  fromBitmaps: string;
  classifiedBy: string;
  flags: string;
}

it('classifies the guest’s real keyboard, mouse and tablet as udev does, from the kernel’s bitmaps too', async () => {
  // Wait until udev has classified them (coldplug), then read the live tree both ways.
  await until(
    'udev data for the input devices',
    `grep -l '^E:ID_INPUT=1' /run/udev/data/c13:* | wc -l | grep -qv '^0$'`,
  );
  const script = `
    require('reflect-metadata');
    const { LocalHostSource } = require('@devgate/host');
    const { parseInputDevices } = require('@devgate/driver-input');
    const source = new LocalHostSource({ backend: 'dom0', hotplug: 'static', probeBlock: false });
    const tree = source.snapshot();
    const bare = new Map(parseInputDevices(tree, 'dom0', { ignoreUdev: true }).map((d) => [d.port.portId, d]));
    console.log(JSON.stringify(parseInputDevices(tree, 'dom0').map((d) => ({
      port: d.port.portId,
      withUdev: d.data['input-class'],
      fromBitmaps: bare.get(d.port.portId)?.data['input-class'],
      classifiedBy: d.data['classified-by'],
      flags: d.data['input-flags'] + ' / ' + bare.get(d.port.portId)?.data['input-flags'],
    }))));`;
  const out = await guest.check(['node', '-e', script], { ...SLOW, cwd: path.join(ROOT, 'packages/driver-input') });
  const devices = JSON.parse(out) as Classified[];
  const byPort = Object.fromEntries(devices.map((d) => [d.port, d]));
  expect(byPort['1-1']).toMatchObject({ withUdev: 'keyboard', fromBitmaps: 'keyboard', classifiedBy: 'udev' });
  expect(byPort['1-2']).toMatchObject({ withUdev: 'mouse', fromBitmaps: 'mouse', classifiedBy: 'udev' });
  // QEMU's usb-tablet is an absolute mouse to udev (ID_INPUT_MOUSE), a tablet to Qubes' input trigger.
  expect(byPort['1-3']).toMatchObject({ withUdev: 'tablet', fromBitmaps: 'tablet', classifiedBy: 'udev' });
  for (const device of devices)
    expect(`${device.port}: ${device.fromBitmaps}`).toBe(`${device.port}: ${device.withUdev}`);
  process.stdout.write(`input-real-kernel: ${devices.map((d) => `${d.port}=${d.withUdev} (${d.flags})`).join(', ')}\n`);
});

it('passes the keyboard to a nested VM with input-linux; a replug restores it with no command; detach stops it', async () => {
  // The nested lab VM: a machine with no CPU (nothing to emulate, the guest's one vCPU stays free),
  // running (QEMU drops input while a VM is paused), with QEMU's input trace. Its -name, -qmp and
  // -pidfile are the lab's.
  await guest.check(
    `mkdir -p ${DG}/state && cat > ${DG}/qemu-traced <<'EOF'
#!/bin/sh
keep=""
while [ $# -gt 0 ]; do
  case "$1" in -name|-qmp|-pidfile) keep="$keep $1 '$2'"; shift 2;; *) shift;; esac
done
eval exec qemu-system-x86_64 -machine none -nodefaults -display none $keep -trace "'input_event_key*'" -D ${DG}/nested-trace.log
EOF
chmod +x ${DG}/qemu-traced
cat > ${DG}/devgated.json <<'EOF'
{ "socket": "${DG}/devgate.sock", "stateDir": "${DG}/state", "domains": "${DG}/domains.json",
  "backends": { "dom0": { "source": "local" } }, "askTimeoutSeconds": 60 }
EOF`,
  );
  const devgated = guest.spawn([
    'sh',
    '-c',
    `${ENV} exec node ${DEVGATED} --config ${DG}/devgated.json > ${DG}/devgated.log 2>&1`,
  ]);
  try {
    await guest.waitForPath(`${DG}/devgate.sock.rw`, { timeoutMs: 600_000 });
    // The nested VM, and the guest's keyboard attached to it (through devgated: journal, checks, audit).
    const attached = await guest.exec(
      [
        'sh',
        '-c',
        `${ENV} node ${DEVGATE} lab up nested && node ${QVM_DEVICE} input attach -o grab-toggle=scrolllock nested dom0:1-1 && node ${QVM_DEVICE} input list`,
      ],
      SLOW,
    );
    expect(attached.stderr).toBe('');
    expect(attached.stdout).toMatch(
      /^dom0:1-1 +Keyboard: QEMU QEMU USB Keyboard +nested \(attached: grab-toggle=scrolllock, grab-all=no, repeat=no\)$/m,
    );

    // A key pressed on the outer keyboard reaches the nested QEMU.
    await press('a');
    await until('key a in the nested QEMU', `grep -q 'qcode a, down 1' ${DG}/nested-trace.log`);

    // Pull the keyboard out, and plug it back into the same port (the same identity: QEMU's serial
    // is its port path). devgated ends the passthrough, then restores it on its own.
    const mark = await guest.ueventMark();
    await guest.unplug('kbd1');
    await guest.waitForUevent({ ACTION: 'remove', SUBSYSTEM: 'input' }, { since: mark, timeoutMs: 120_000 });
    await guest.qmp.execute('device_add', { driver: 'usb-kbd', id: 'kbd1', bus: 'xhci.0', port: '1' });
    // Keys reach the nested VM again: press until one arrives (the re-attach takes a moment).
    const deadline = Date.now() + 600_000;
    for (;;) {
      await press('b');
      const seen = await guest.exec(['sh', '-c', `grep -q 'qcode b, down 1' ${DG}/nested-trace.log`]);
      if (seen.code === 0) break;
      if (Date.now() > deadline) throw new Error('keys did not reach the nested VM after the replug');
    }
    const audit = await guest.check(['sh', '-c', `${ENV} node ${DEVGATE} audit --json --limit 50`], SLOW);
    const actions = (JSON.parse(audit) as { action: string; actor: string; portId?: string; outcome: string }[]).map(
      (e) => `${e.action} ${e.portId ?? ''} ${e.outcome} ${e.actor}`,
    );
    // Seen gone then back (a surprise removal, then a re-attach), or too quickly to be seen gone (the
    // input device changed under the attachment: detached and attached again). Either way, by devgated.
    expect(actions).toContainEqual('reattach 1-1 ok devgated (input replug)');
    expect(
      actions.some((a) => /^(surprise-removal 1-1 ok devgated|detach 1-1 ok devgated \(input replug\))$/.test(a)),
    ).toBe(true);

    // Detach: QEMU lets go of the node; the guest's own evdev gets the next key, the nested VM does not.
    const detached = await guest.exec(['sh', '-c', `${ENV} node ${QVM_DEVICE} input detach nested dom0:1-1`], SLOW);
    expect(detached).toMatchObject({ code: 0, stderr: '' });
    const node = (await guest.check(`ls /sys/bus/usb/devices/1-1:1.0/*/input/*/ | grep '^event'`)).trim();
    const reader = guest.spawn([
      'sh',
      '-c',
      `dd if=/dev/input/${node} bs=24 count=1 2>/dev/null | od -An -tx1 | head -1`,
    ]);
    let read: { stdout: string } | undefined;
    void reader.result.then((r) => (read = r));
    const readBy = Date.now() + 600_000;
    while (!read) {
      // Still grabbed by QEMU, the guest's own reader would wait forever.
      if (Date.now() > readBy) throw new Error('the guest never read a key after the detach: still grabbed?');
      await press('c');
      await Promise.race([reader.result, new Promise((resolve) => setTimeout(resolve, 2_000))]);
    }
    expect(read.stdout.trim()).not.toBe('');
    expect(await guest.check(`cat ${DG}/nested-trace.log`)).not.toContain('key qcode c, ');
  } catch (error) {
    // What devgated saw and did, for whoever reads the failure.
    const log = await guest.exec(
      ['sh', '-c', `grep -v libvirt ${DG}/devgated.log | tail -20; ${ENV} node ${DEVGATE} audit --limit 20`],
      SLOW,
    );
    process.stdout.write(`input-real-kernel: devgated in the guest:\n${log.stdout}${log.stderr}\n`);
    throw error;
  } finally {
    await devgated.kill();
    await guest.exec(['sh', '-c', `${ENV} node ${DEVGATE} lab down`], SLOW).catch(() => undefined);
  }
});
