/**
 * The USB VM (Qubes' sys-usb) on a KVM host: `devgate usbvm create` and `devgate usbvm remove`.
 *
 * `--emulated` makes a lab guest (@devgate/guest-lab: this host's userland, read-only, a tmpfs on
 * top) with an emulated xHCI controller, into which `devgate lab plug NAME KIND` inserts devices;
 * the host's kernel never sees them. The VM gets virtio-serial ports for devgate-agent: its control
 * channel (`org.devgate.agent`) and a pool of export ports (`org.devgate.export.N`), whose host sides
 * are Unix sockets of the VM's QEMU; the agent is started as soon as the guest runs, and restarted
 * if it dies. The VM is registered in the domain registry with its agent's sockets, so devgated
 * (when it next starts) and every in-process command read its devices through the agent.
 *
 * `--controller BDF` would give the VM a real USB controller through VFIO: the controller report of
 * @devgate/driver-pci decides, and an unsafe or impractical controller (no IOMMU, the host's own
 * keyboard or disk behind it, ...) is refused with its reasons.
 *
 * Everything the VM is lives in `<lab state dir>/<name>.guest/` plus its `<name>.qmp|.pid|.log`,
 * like a `lab up --os` guest, so `lab exec`, `lab plug` and `lab unplug` work on it, and `usbvm
 * remove` (or `lab down`) takes it all away.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Errors, isValidDomainName } from '@devgate/core';
import { type AgentEndpoints, defaultLabStateDir, defaultRegistryFile, updateRegistry } from '@devgate/backend-qemu';
import { CONTROL_PORT_NAME, exportPortName } from '@devgate/backend-agent';
import { type AcceleratorChoice, type Guest, bootGuest, labDownWithGuests } from '@devgate/guest-lab';
import { LOCAL_ROOTS, readHostTree } from '@devgate/host';
import { systemPciNames, usbControllerReport } from '@devgate/driver-pci';
import { readTrustedRegistry } from '@devgate/service';

export interface UsbVmOptions {
  readonly name?: string;
  readonly registryFile?: string;
  readonly stateDir?: string;
  /** Export ports: how many devices can be attached from the VM at once. Default 4. */
  readonly exportPorts?: number;
  readonly memoryMb?: number;
  readonly accel?: AcceleratorChoice;
  /** Run systemd-udevd in the VM (as a real sys-usb does). Default false. */
  readonly udev?: boolean;
  /** USBGuard rules the agent applies inside the VM. */
  readonly usbRules?: string;
  readonly bootTimeoutMs?: number;
  /** How long the agent may take to say hello once the guest runs. Default 90 s (TCG). */
  readonly agentTimeoutMs?: number;
}

export interface UsbVm {
  readonly name: string;
  readonly pid: number;
  readonly qmp: string;
  readonly agent: AgentEndpoints;
  readonly accel: string;
  readonly bootMs: number;
  /** From QEMU's start to the agent's hello. */
  readonly readyMs: number;
}

/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

/** `devgate usbvm create --emulated`: boots the VM, starts its agent, registers it. All or nothing. */
export async function createEmulatedUsbVm(options: UsbVmOptions = {}): Promise<UsbVm> {
  const name = options.name ?? 'sys-usb';
  const registryFile = options.registryFile ?? defaultRegistryFile();
  const stateDir = options.stateDir ?? defaultLabStateDir(registryFile);
  const ports = options.exportPorts ?? 4;
  if (!isValidDomainName(name)) throw Errors.invalidDomainName({ name });
  if (!Number.isInteger(ports) || ports < 1 || ports > 16) {
    throw Errors.badOption({ option: '--export-ports', reason: 'a number from 1 to 16' });
  }
  // Read as devgated reads it: a registry others could write is refused before anything boots.
  const registry = readTrustedRegistry(registryFile);
  if (name === registry.dom0 || Object.hasOwn(registry.domains, name) || Object.hasOwn(registry.backends ?? {}, name)) {
    throw Errors.usbvmExists({ name });
  }
  const dir = path.join(stateDir, `${name}.guest`);
  const control = path.join(dir, 'devgate-agent.sock');
  const exports: Record<string, string> = {};
  for (let i = 0; i < ports; i++) exports[exportPortName(i)] = path.join(dir, `export-${i}.sock`);
  for (const socket of [control, ...Object.values(exports)]) {
    if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) {
      throw Errors.labStartFailed({
        domain: name,
        reason: `socket path '${socket}' is longer than ${MAX_SOCKET_PATH} bytes; choose a shorter state directory`,
      });
    }
  }
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  if (fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true }); // left by a crash: unregistered

  const opt = (value: string) => value.replaceAll(',', ',,');
  // prettier-ignore
  const extraQemuArgs = [
    '-chardev', `socket,id=dgagent,path=${opt(control)},server=on,wait=off`,
    '-device', `virtserialport,bus=vser.0,chardev=dgagent,name=${CONTROL_PORT_NAME}`,
    ...Object.entries(exports).flatMap(([port, socket], i) => [
      '-chardev', `socket,id=dgexport${i},path=${opt(socket)},server=on,wait=off`,
      '-device', `virtserialport,bus=vser.0,chardev=dgexport${i},name=${port}`,
    ]),
  ];
  const started = Date.now();
  const guest = await bootGuest({
    name,
    detached: true,
    dir,
    qmpSocket: path.join(stateDir, `${name}.qmp`),
    pidfile: path.join(stateDir, `${name}.pid`),
    qemuLog: path.join(stateDir, `${name}.log`),
    memoryMb: options.memoryMb ?? 512,
    accel: options.accel,
    udev: options.udev,
    bootTimeoutMs: options.bootTimeoutMs,
    extraQemuArgs,
  });
  try {
    await startAgent(guest, options);
    await waitForHello(control, options.agentTimeoutMs ?? 90_000);
    const agent: AgentEndpoints = { control, exports, usbvm: true };
    await updateRegistry(registryFile, (data) => {
      if (Object.hasOwn(data.domains, name)) throw Errors.usbvmExists({ name });
      return {
        ...data,
        domains: { ...data.domains, [name]: { qmp: guest.qmpSocket, pid: guest.pid, lab: true, agent } },
      };
    });
    await guest.detach();
    return {
      name,
      pid: guest.pid,
      qmp: guest.qmpSocket,
      agent,
      accel: guest.accel,
      bootMs: guest.bootMs,
      readyMs: Date.now() - started,
    };
  } catch (error) {
    await guest.dispose();
    throw error;
  }
}

/**
 * Starts devgate-agent in the guest, detached from the lab's command channel, in a loop that
 * restarts it if it dies (a real USB VM runs it as a systemd service: apps/agent/systemd/).
 */
async function startAgent(guest: Guest, options: UsbVmOptions): Promise<void> {
  // The guest runs the agent's own files: the CLI locates the package, it imports none of its code.
  // eslint-disable-next-line @nx/enforce-module-boundaries
  const agentBin = path.join(path.dirname(require.resolve('@devgate/agent/package.json')), 'bin', 'devgate-agent.cjs');
  const quote = (text: string) => `'${text.replaceAll("'", "'\\''")}'`;
  const args = [process.execPath, agentBin, '--port', CONTROL_PORT_NAME];
  if (options.usbRules) args.push('--usb-rules', path.resolve(options.usbRules));
  const loop = `while :; do ${args.map(quote).join(' ')} >>/run/devgate-agent.log 2>&1; sleep 1; done`;
  await guest.check(['/bin/sh', '-c', `setsid /bin/sh -c ${quote(loop)} </dev/null >/dev/null 2>&1 &`]);
}

/** Connects to the agent's control socket and waits for its hello line; then lets go of it. */
export function waitForHello(control: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const socket = net.connect(control);
      let buffer = '';
      const fail = (reason: string) => {
        socket.destroy();
        if (Date.now() > deadline) {
          reject(Errors.agentUnavailable({ backend: path.basename(path.dirname(control)), reason }));
        } else setTimeout(attempt, 200);
      };
      const timer = setTimeout(() => fail(`no hello within ${timeoutMs} ms`), Math.max(0, deadline - Date.now()));
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => {
        buffer = (buffer + chunk).slice(-65536);
        if (/"type":"hello"/.test(buffer) && buffer.includes('\n', buffer.indexOf('"type":"hello"'))) {
          clearTimeout(timer);
          socket.destroy();
          resolve();
        }
      });
      socket.on('error', (error) => {
        clearTimeout(timer);
        fail(error.message);
      });
    };
    attempt();
  });
}

/** The seed's warning, shown before a USB VM is removed. */
export const REMOVE_WARNING =
  'Warning: This procedure will result in your USB controller(s) being attached directly to dom0.\n';

export interface RemoveResult {
  readonly name: string;
  /** Controllers given back to the host (none for an emulated USB VM). */
  readonly controllers: readonly string[];
}

/** `devgate usbvm remove`: stops the VM, removes it and everything made for it, unregisters it. */
export async function removeUsbVm(options: Pick<UsbVmOptions, 'name' | 'registryFile'> = {}): Promise<RemoveResult> {
  const name = options.name ?? 'sys-usb';
  const registryFile = options.registryFile ?? defaultRegistryFile();
  // Checked as devgated checks it: what it names is stopped and its files removed.
  const registry = readTrustedRegistry(registryFile);
  const entry = Object.hasOwn(registry.domains, name) ? registry.domains[name] : undefined;
  if (!entry) throw Errors.noSuchDomain({ domain: name, file: registryFile });
  if (!entry.agent?.usbvm || !entry.lab) throw Errors.notUsbvm({ name });
  await labDownWithGuests([name], { registryFile, registryReader: readTrustedRegistry });
  return { name, controllers: [] };
}

/**
 * `--controller BDF`: the controller report decides. Refused here with its reasons when it is not
 * safe for a USB VM (on a host without an IOMMU, never); a safe one is not passed through yet.
 */
export function checkController(bdf: string, sysRoot = LOCAL_ROOTS.sys): never {
  // Without an IOMMU no controller can be passed through safely: said first, whatever the controller.
  if (!hasIommu(sysRoot))
    throw Errors.noIommu({ device: bdf, reason: 'this host has no IOMMU (no /sys/kernel/iommu_groups)' });
  const report = usbControllerReport(readHostTree({ ...LOCAL_ROOTS, sys: sysRoot }), systemPciNames(), {
    iommu: 'present',
  });
  const wanted = bdf.toLowerCase().replace(/^(?![0-9a-f]{4}:)/, '0000:');
  const controller = report.find((c) => c.sbdf === wanted || c.portId === bdf);
  if (!controller) {
    throw Errors.unknownDevice({
      backend: 'dom0',
      devclass: 'pci',
      port: bdf,
      suggestion: report[0]?.sbdf,
    });
  }
  if (controller.verdict !== 'safe for a USB VM') {
    throw Errors.badOption({
      option: '--controller',
      reason: `${controller.sbdf} is ${controller.verdict}: ${controller.reasons.join('; ')}`,
    });
  }
  throw Errors.unsupported({
    driverId: 'usbvm',
    operation: `a USB VM with controller ${controller.sbdf} (use --emulated)`,
  });
}

function hasIommu(sysRoot: string): boolean {
  const groups = path.join(sysRoot, 'kernel', 'iommu_groups');
  return fs.existsSync(groups) && fs.readdirSync(groups).length > 0;
}
