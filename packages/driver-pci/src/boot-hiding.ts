/**
 * Hiding USB controllers from the host from the moment it boots (`devgate usb-controllers hide`), so
 * the host never drives a controller meant for a USB VM: vfio-pci takes it in the initramfs, before
 * the USB host driver can (shared/reference/input-pci.md, B5). What is written, under a root directory
 * (`/`, or a temporary one in tests):
 *
 *  - `/etc/modprobe.d/devgate-usb-controllers.conf`: `options vfio-pci ids=vvvv:dddd,...` when the
 *    chosen controllers' ids are theirs alone (the modprobe form of the kernel's `vfio-pci.ids=`),
 *    with `softdep <host driver> pre: vfio-pci` so vfio-pci is loaded first; when another function
 *    shares a chosen controller's ids (ids would take it too), a driver-override rule instead: an
 *    `install` command for the host driver that writes `vfio-pci` to each chosen controller's
 *    driver_override before the driver loads;
 *  - the initramfs: Debian's `/etc/initramfs-tools/modules` gets the vfio modules, Fedora's dracut a
 *    `/etc/dracut.conf.d/devgate-usb-controllers.conf` that forces them in early;
 *  - and the command that rebuilds the initramfs (`update-initramfs -u -k all`, `dracut --force
 *    --regenerate-all`), which the user runs.
 *
 * The plan is shown as a diff first. It is refused when it would leave the host no keyboard to type
 * the disk passphrase with, or hide the disk the host boots from; it warns about USB storage behind a
 * controller (an Anti Evil Maid stick, a live USB) and about the firmware using the controller before
 * vfio-pci takes it. `--apply` keeps what each file held before in a manifest, and `--undo` puts it
 * back byte for byte (and removes what it created), refusing if a file changed since.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Errors } from '@devgate/core';
import { type PciFunction } from './parse-pci-devices.js';
import { type PciHost, inputLabel, isUsbController } from './pci-devices.js';
import { type ControllerReport } from './usb-controllers.js';

export type DistroFamily = 'debian' | 'fedora';

export const MODPROBE_FILE = 'etc/modprobe.d/devgate-usb-controllers.conf';
export const INITRAMFS_TOOLS_MODULES = 'etc/initramfs-tools/modules';
export const DRACUT_FILE = 'etc/dracut.conf.d/devgate-usb-controllers.conf';
export const MANIFEST_FILE = 'var/lib/devgate/usb-controllers-hide.json';

const VFIO_MODULES = ['vfio', 'vfio_iommu_type1', 'vfio_pci'];

/** The kernel module of each USB host controller kind (by programming interface). */
const HOST_MODULES: Record<number, string> = { 0x00: 'uhci_hcd', 0x10: 'ohci_pci', 0x20: 'ehci_pci', 0x30: 'xhci_pci' };

export interface FileEdit {
  /** Relative to the root: `etc/modprobe.d/...`. */
  readonly file: string;
  readonly before: Buffer | undefined;
  readonly after: Buffer;
}

export interface HidePlan {
  readonly root: string;
  readonly family: DistroFamily;
  readonly method: 'ids' | 'driver-override';
  readonly controllers: readonly ControllerReport[];
  readonly edits: readonly FileEdit[];
  /** What the user runs afterwards to rebuild the initramfs. */
  readonly commands: readonly string[];
  readonly warnings: readonly string[];
}

export interface HideRequest {
  readonly root: string;
  readonly host: PciHost;
  readonly report: readonly ControllerReport[];
  /** Ports (`00_14.0`, `dom0:00_14.0`) or SBDFs; default: every controller that is safe for a USB VM. */
  readonly controllers?: readonly string[];
  readonly family?: DistroFamily;
}

export function planHide(request: HideRequest): HidePlan {
  const { root, host, report } = request;
  const chosen = chooseControllers(report, request.controllers);
  const family = request.family ?? detectFamily(root);
  const bySbdf = new Map(host.functions.map((fn) => [fn.sbdf, fn]));
  const functions = chosen.map((c) => bySbdf.get(c.sbdf)!);
  const label = (c: ControllerReport) => `${c.port} (${c.sbdf})`;

  // Refusals: the disk passphrase needs a keyboard, and the host must find its boot disk.
  const hidden = new Set(chosen.map((c) => c.sbdf));
  const keyboards = host.inputs.filter((i) => i.kinds.includes('keyboard'));
  const left = keyboards.filter((k) => !k.behind || !hidden.has(k.behind));
  if (keyboards.length > 0 && left.length === 0) {
    const where = keyboards.map((k) => `${inputLabel(k)} is behind ${label(chosen.find((c) => c.sbdf === k.behind)!)}`);
    throw Errors.hideRefused({
      reason: `it would leave no keyboard for the disk passphrase: ${where.join('; ')}`,
    });
  }
  const allControllers = host.functions.filter(isUsbController);
  if (keyboards.length === 0 && allControllers.every((c) => hidden.has(c.sbdf))) {
    throw Errors.hideRefused({
      reason:
        'the host has no keyboard plugged in, and every USB controller would be hidden: none could be plugged in to type the disk passphrase',
    });
  }
  for (const c of chosen) {
    const busy = c.behind.disks.find((d) => d.inUse);
    if (busy) {
      throw Errors.hideRefused({
        reason: `it would hide the boot device: the host uses ${busy.name} behind ${label(c)} (${busy.inUse})`,
      });
    }
  }

  const warnings: string[] = [];
  for (const c of chosen) {
    const sticks = c.behind.disks.filter((d) => !d.inUse);
    if (sticks.length > 0) {
      warnings.push(
        `USB storage is behind ${label(c)} (${sticks.map((d) => d.name).join(', ')}): an Anti Evil Maid stick or a ` +
          'USB boot device there will not be found at boot, and AEM hangs',
      );
    }
    for (const reason of c.reasons) warnings.push(`${label(c)} is ${c.verdict}: ${reason}`);
  }
  warnings.push(
    'the firmware, the boot loader and the kernel use the controllers until the initramfs loads vfio-pci: ' +
      'a device plugged in now is exposed to the host during early boot',
  );
  for (const module of builtinHostDrivers(root, functions)) {
    warnings.push(`${module} is built into the kernel under ${root}: it takes its controllers before vfio-pci loads`);
  }

  const ids = [...new Set(functions.map((fn) => `${fn.vendorId}:${fn.deviceId}`))];
  const shared = host.functions.filter((fn) => !hidden.has(fn.sbdf) && ids.includes(`${fn.vendorId}:${fn.deviceId}`));
  const method = shared.length === 0 ? 'ids' : 'driver-override';
  if (method === 'driver-override') {
    warnings.push(
      `${shared.map((fn) => fn.sbdf).join(', ')} ${shared.length === 1 ? 'has' : 'have'} the same ids as a chosen controller: ` +
        'each chosen controller is named by its address (driver_override) instead of by ids',
    );
  }
  const modules = [...new Set(functions.map((fn) => HOST_MODULES[fn.classCode & 0xff]).filter(Boolean))].sort();

  const header = [
    '# Written by devgate usb-controllers hide: these USB controllers stay on vfio-pci from early boot,',
    '# for a USB VM. devgate usb-controllers hide --undo restores what was here before.',
    ...chosen.map((c) => `#   ${c.sbdf}  ${c.port}  ${c.description}`),
  ];
  const modprobe =
    method === 'ids'
      ? [...header, `options vfio-pci ids=${ids.join(',')}`, ...modules.map((m) => `softdep ${m} pre: vfio-pci`)]
      : [
          ...header,
          ...modules.map(
            (m) =>
              `install ${m} /bin/sh -c 'for d in ${functions.map((fn) => fn.sbdf).join(' ')}; do ` +
              `echo vfio-pci > /sys/bus/pci/devices/$d/driver_override; done; ` +
              `/sbin/modprobe vfio-pci; /sbin/modprobe --ignore-install ${m} $CMDLINE_OPTS'`,
          ),
        ];
  const edits: FileEdit[] = [edit(root, MODPROBE_FILE, () => modprobe.join('\n') + '\n')];
  let commands: string[];
  if (family === 'debian') {
    edits.push(
      edit(root, INITRAMFS_TOOLS_MODULES, (before) => {
        const text = before ?? '';
        const block = [
          '# devgate usb-controllers hide: vfio-pci in the initramfs, before the USB host drivers',
          ...VFIO_MODULES,
        ];
        return (text === '' || text.endsWith('\n') ? text : text + '\n') + block.join('\n') + '\n';
      }),
    );
    commands = ['update-initramfs -u -k all'];
  } else {
    edits.push(
      edit(root, DRACUT_FILE, () =>
        [
          '# Written by devgate usb-controllers hide: vfio-pci in the initramfs, loaded before the USB host drivers.',
          `force_drivers+=" ${VFIO_MODULES.join(' ')} "`,
          `install_items+=" /${MODPROBE_FILE} "`,
          '',
        ].join('\n'),
      ),
    );
    commands = ['dracut --force --regenerate-all'];
  }
  return { root, family, method, controllers: chosen, edits, commands, warnings };
}

function chooseControllers(
  report: readonly ControllerReport[],
  wanted: readonly string[] | undefined,
): ControllerReport[] {
  if (wanted === undefined || wanted.length === 0) {
    const safe = report.filter((c) => c.verdict === 'safe for a USB VM');
    if (safe.length === 0) {
      throw Errors.hideRefused({ reason: 'no USB controller is safe for a USB VM; name the controllers to hide' });
    }
    return safe;
  }
  return wanted.map((name) => {
    const found = report.find((c) => c.port === name || c.portId === name || c.sbdf === name);
    if (!found) {
      const [backend, port] = name.includes(':') && !/^[0-9a-f]{4}:/.test(name) ? name.split(':') : ['dom0', name];
      throw Errors.unknownDevice({ backend, devclass: 'pci', port, suggestion: report[0]?.port });
    }
    return found;
  });
}

/** The family from `etc/os-release` (ID and ID_LIKE), else from which initramfs tool is configured. */
export function detectFamily(root: string): DistroFamily {
  const osRelease =
    readText(path.join(root, 'etc/os-release')) ?? readText(path.join(root, 'usr/lib/os-release')) ?? '';
  const ids = /^(?:ID|ID_LIKE)=(.*)$/gm;
  const words: string[] = [];
  for (const m of osRelease.matchAll(ids)) words.push(...m[1].replace(/["']/g, '').split(/\s+/));
  if (words.some((w) => ['debian', 'ubuntu'].includes(w))) return 'debian';
  if (words.some((w) => ['fedora', 'rhel', 'centos'].includes(w))) return 'fedora';
  if (fs.existsSync(path.join(root, 'etc/initramfs-tools'))) return 'debian';
  if (fs.existsSync(path.join(root, 'etc/dracut.conf.d'))) return 'fedora';
  throw Errors.hideRefused({
    reason: `cannot tell the distribution family under ${root}; pass --family debian or --family fedora`,
  });
}

/** Host drivers of the chosen controllers that `lib/modules/*\/modules.builtin` lists as built in. */
function builtinHostDrivers(root: string, functions: readonly PciFunction[]): string[] {
  const modulesDir = path.join(root, 'lib/modules');
  const wanted = new Set(functions.map((fn) => HOST_MODULES[fn.classCode & 0xff]).filter(Boolean));
  const found = new Set<string>();
  for (const version of safeReaddir(modulesDir)) {
    const builtin = readText(path.join(modulesDir, version, 'modules.builtin')) ?? '';
    for (const line of builtin.split('\n')) {
      const name = path.basename(line.trim(), '.ko').replace(/-/g, '_');
      if (wanted.has(name)) found.add(name);
    }
  }
  return [...found].sort();
}

function edit(root: string, file: string, make: (before: string | undefined) => string): FileEdit {
  const before = readBytes(path.join(root, file));
  return { file, before, after: Buffer.from(make(before?.toString('utf8')), 'utf8') };
}

/** The plan as a unified diff, one hunk per file (the files are short). */
export function planDiff(plan: HidePlan): string {
  return plan.edits.map((e) => unifiedDiff(e.file, e.before?.toString('utf8'), e.after.toString('utf8'))).join('');
}

function unifiedDiff(file: string, before: string | undefined, after: string): string {
  const a = lines(before ?? '');
  const b = lines(after);
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--;
    endB--;
  }
  if (start === endA && start === endB) return '';
  const context = 3;
  const from = Math.max(0, start - context);
  const toA = Math.min(a.length, endA + context);
  const toB = Math.min(b.length, endB + context);
  const show = (prefix: string) => (line: string) =>
    line.endsWith(NO_EOL)
      ? `${prefix}${line.slice(0, -NO_EOL.length)}\n\\ No newline at end of file`
      : `${prefix}${line}`;
  const out = [
    `--- ${before === undefined ? '/dev/null' : `a/${file}`}`,
    `+++ b/${file}`,
    `@@ -${range(from, toA - from)} +${range(from, toB - from)} @@`,
    ...a.slice(from, start).map(show(' ')),
    ...a.slice(start, endA).map(show('-')),
    ...b.slice(start, endB).map(show('+')),
    ...a.slice(endA, toA).map(show(' ')),
  ];
  return out.join('\n') + '\n';
}

/** A last line without its newline is another line than the same text with one (diff's "\ No newline"). */
const NO_EOL = '\u0000';

function lines(text: string): string[] {
  if (text === '') return [];
  const result = text.split('\n');
  if (result[result.length - 1] === '') result.pop();
  else result[result.length - 1] += NO_EOL;
  return result;
}

function range(start: number, length: number): string {
  return length === 0 ? `${start},0` : length === 1 ? `${start + 1}` : `${start + 1},${length}`;
}

interface Manifest {
  readonly version: 1;
  readonly family: DistroFamily;
  readonly controllers: readonly string[];
  readonly files: readonly {
    readonly file: string;
    readonly before: string | null;
    readonly mode: number | null;
    readonly after: string;
  }[];
  readonly createdDirs: readonly string[];
  readonly commands: readonly string[];
}

/** Writes the plan, keeping what each file held before in the manifest. */
export function applyHide(plan: HidePlan): void {
  const manifestPath = path.join(plan.root, MANIFEST_FILE);
  if (fs.existsSync(manifestPath)) throw Errors.hideAlreadyApplied({ file: manifestPath });
  const createdDirs: string[] = [];
  const mkdirs = (dir: string) => {
    const missing: string[] = [];
    for (let at = dir; !fs.existsSync(at); at = path.dirname(at)) missing.unshift(at);
    for (const d of missing) {
      fs.mkdirSync(d);
      createdDirs.push(path.relative(plan.root, d));
    }
  };
  const files: Manifest['files'][number][] = [];
  for (const e of plan.edits) {
    const target = path.join(plan.root, e.file);
    const stat = fs.statSync(target, { throwIfNoEntry: false });
    files.push({
      file: e.file,
      before: e.before === undefined ? null : e.before.toString('base64'),
      mode: stat ? stat.mode & 0o7777 : null,
      after: sha256(e.after),
    });
  }
  mkdirs(path.dirname(manifestPath));
  const manifest: Manifest = {
    version: 1,
    family: plan.family,
    controllers: plan.controllers.map((c) => c.sbdf),
    files,
    createdDirs,
    commands: plan.commands,
  };
  // The manifest first: an interrupted apply can still be undone.
  writeAtomic(manifestPath, Buffer.from(JSON.stringify(manifest, null, 2) + '\n'), 0o600);
  for (const e of plan.edits) {
    const target = path.join(plan.root, e.file);
    mkdirs(path.dirname(target));
    // In place when the file exists, so its mode, owner and links stay as they were.
    if (e.before !== undefined) fs.writeFileSync(target, e.after);
    else fs.writeFileSync(target, e.after, { mode: 0o644 });
  }
  // Directories the files needed were made after the manifest was written: record them too.
  writeAtomic(manifestPath, Buffer.from(JSON.stringify({ ...manifest, createdDirs }, null, 2) + '\n'), 0o600);
}

export interface UndoResult {
  readonly restored: readonly string[];
  readonly removed: readonly string[];
  readonly commands: readonly string[];
}

/** Puts back what `applyHide` changed, byte for byte; refuses, changing nothing, if a file changed since. */
export function undoHide(root: string): UndoResult {
  const manifestPath = path.join(root, MANIFEST_FILE);
  const text = readText(manifestPath);
  if (text === undefined) throw Errors.hideNothingToUndo({ file: manifestPath });
  const manifest = JSON.parse(text) as Manifest;
  for (const f of manifest.files) {
    const now = readBytes(path.join(root, safeRelative(f.file)));
    if (now !== undefined && sha256(now) !== f.after) throw Errors.hideFileChanged({ file: path.join(root, f.file) });
  }
  const restored: string[] = [];
  const removed: string[] = [];
  for (const f of manifest.files) {
    const target = path.join(root, safeRelative(f.file));
    if (f.before === null) {
      fs.rmSync(target, { force: true });
      removed.push(f.file);
    } else {
      fs.writeFileSync(target, Buffer.from(f.before, 'base64'));
      if (f.mode !== null) fs.chmodSync(target, f.mode);
      restored.push(f.file);
    }
  }
  fs.rmSync(manifestPath);
  for (const dir of [...manifest.createdDirs].reverse()) {
    const target = path.join(root, safeRelative(dir));
    if (safeReaddir(target).length === 0) fs.rmSync(target, { recursive: true, force: true });
  }
  return { restored, removed, commands: manifest.commands };
}

function safeRelative(file: string): string {
  if (path.isAbsolute(file) || file.split(/[\\/]/).includes('..')) throw new Error(`not a relative path: ${file}`);
  return file;
}

function writeAtomic(file: string, data: Buffer, mode: number): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data, { mode });
  fs.renameSync(tmp, file);
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function readBytes(file: string): Buffer | undefined {
  try {
    return fs.readFileSync(file);
  } catch {
    return undefined;
  }
}

function readText(file: string): string | undefined {
  return readBytes(file)?.toString('utf8');
}

function safeReaddir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}
