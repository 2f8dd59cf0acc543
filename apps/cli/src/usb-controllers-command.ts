import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Command, Option } from 'commander';
import { Errors, type HostTree } from '@devgate/core';
import { LOCAL_ROOTS, loadRecording, readHostTree, rootsUnder } from '@devgate/host';
import {
  type ControllerReport,
  type DistroFamily,
  type IommuPresence,
  type PciHost,
  applyHide,
  planDiff,
  planHide,
  readPciHost,
  systemPciNames,
  undoHide,
  usbControllerReport,
} from '@devgate/driver-pci';
import { type Io } from './io.js';
import { formatColumns } from './format.js';

interface SourceOptions {
  readonly sysroot?: string;
  readonly recording?: string;
  readonly backend?: string;
}

/**
 * `devgate usb-controllers`: every USB controller of a host with a verdict for a USB VM and the
 * reasons (driver-pci's usb-controllers.ts), and `hide --plan|--apply|--undo`, which keeps chosen
 * controllers on vfio-pci from early boot (driver-pci's boot-hiding.ts). Read-only except `hide
 * --apply|--undo`, which write under --root (default /). It reads the host's sysfs directly, as lsusb
 * and lspci do: devgated is not needed.
 */
export function addUsbControllersCommand(program: Command, io: Io): void {
  const command = sourceOptions(
    program
      .command('usb-controllers')
      .description(
        'which USB controller can be given to a USB VM, and why (hide: keep controllers from the host at boot)',
      ),
  )
    .option('--json', 'print JSON (one array of controllers)')
    .action((options: SourceOptions & { json?: boolean }) => {
      const { report } = readReport(options);
      io.out(options.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
    });

  sourceOptions(
    command
      .command('hide')
      .description('keep USB controllers on vfio-pci from early boot (default: the ones safe for a USB VM)')
      .argument('[CONTROLLER...]', 'ports (dom0:00_14.0, 00_14.0) or SBDFs (0000:00:14.0)'),
  )
    .addOption(new Option('--plan', 'show what would be written, as a diff (the default)').conflicts(['apply', 'undo']))
    .addOption(new Option('--apply', 'write it (the diff is shown first)').conflicts('undo'))
    .addOption(new Option('--undo', 'put back what --apply changed, byte for byte'))
    .option('--root <dir>', 'the system to configure (default /)', '/')
    .addOption(
      new Option('--family <family>', 'the distribution family (default: from etc/os-release)').choices([
        'debian',
        'fedora',
      ]),
    )
    .action((controllers: string[], options: SourceOptions & HideFlags) => {
      const root = path.resolve(options.root);
      if (options.undo) {
        if (controllers.length > 0) throw Errors.badOption({ option: '--undo', reason: 'takes no controllers' });
        const undone = undoHide(root);
        for (const file of undone.restored) io.out(`restored ${path.join(root, file)}\n`);
        for (const file of undone.removed) io.out(`removed ${path.join(root, file)}\n`);
        io.out(`now rebuild the initramfs: ${undone.commands.join(' && ')}\n`);
        return;
      }
      const { host, report } = readReport(options);
      const plan = planHide({
        root,
        host,
        report,
        controllers,
        family: options.family as DistroFamily | undefined,
      });
      io.out(planDiff(plan));
      for (const warning of plan.warnings) io.err(`warning: ${warning}\n`);
      if (!options.apply) {
        io.out(`\nto write this: devgate usb-controllers hide --apply${argsOf(controllers, options)}\n`);
        io.out(`then rebuild the initramfs: ${plan.commands.join(' && ')}\n`);
        return;
      }
      applyHide(plan);
      io.out(`\nwritten; now rebuild the initramfs: ${plan.commands.join(' && ')}\n`);
      io.out(`to undo: devgate usb-controllers hide --undo${options.root !== '/' ? ` --root ${options.root}` : ''}\n`);
    });
}

interface HideFlags {
  readonly plan?: boolean;
  readonly apply?: boolean;
  readonly undo?: boolean;
  readonly root: string;
  readonly family?: string;
}

function sourceOptions(command: Command): Command {
  return command
    .addOption(new Option('--sysroot <dir>', 'read sys/ under DIR instead of /'))
    .addOption(new Option('--recording <file>', 'read a recorded host').conflicts('sysroot'))
    .addOption(new Option('--backend <name>', 'the backend domain name of these devices').default('dom0'));
}

/**
 * The report on the host's tree, and what the hide plan needs of it. Whether the host has an IOMMU:
 * sysfs says (kernel/iommu_groups); a recording says only through the groups it recorded.
 */
function readReport(options: SourceOptions): { host: PciHost; report: ControllerReport[] } {
  const read = (tree: HostTree, iommu?: IommuPresence) => ({
    host: readPciHost(tree, systemPciNames()),
    report: usbControllerReport(tree, systemPciNames(), { backend: options.backend, iommu }),
  });
  if (options.recording) {
    const recording = loadRecording(options.recording);
    try {
      return read(recording.tree);
    } finally {
      recording.dispose();
    }
  }
  const roots = options.sysroot ? rootsUnder(options.sysroot) : LOCAL_ROOTS;
  const groups = path.join(roots.sys, 'kernel', 'iommu_groups');
  return read(readHostTree(roots), fs.existsSync(groups) && fs.readdirSync(groups).length > 0 ? 'present' : 'absent');
}

/** A table, then each controller's reasons, notes and what is behind it. */
export function formatReport(report: readonly ControllerReport[]): string {
  if (report.length === 0) return 'no USB controllers\n';
  const table = formatColumns([
    ['CONTROLLER', 'SBDF', 'KIND', 'VERDICT', 'DESCRIPTION'],
    ...report.map((c) => [c.port, c.sbdf, c.kind, c.verdict, c.description]),
  ]);
  const details = report.map((c) => {
    const lines = [`${c.port} (${c.sbdf}): ${c.verdict}`];
    for (const reason of c.reasons) lines.push(`  - ${reason}`);
    for (const note of c.notes) lines.push(`  note: ${note}`);
    const { usbDevices, inputs, disks } = c.behind;
    const devices = usbDevices.filter((u) => !u.hub).map((u) => `${u.busid} ${u.ids}${u.label ? ` "${u.label}"` : ''}`);
    lines.push(`  behind it: ${devices.length > 0 ? devices.join(', ') : 'no USB devices'}`);
    if (inputs.length > 0)
      lines.push(
        `  input: ${inputs.map((i) => `${i.name}${i.label ? ` "${i.label}"` : ''} (${i.kinds.join(', ')})`).join(', ')}`,
      );
    if (disks.length > 0)
      lines.push(`  disks: ${disks.map((d) => `${d.name}${d.inUse ? ` (${d.inUse})` : ''}`).join(', ')}`);
    lines.push(
      `  IOMMU group: ${c.iommuGroup ?? 'unknown'}${c.groupMembers.length > 0 ? ` (with ${c.groupMembers.join(', ')})` : ''}`,
    );
    lines.push(
      `  reset: ${c.reset.supported === undefined ? 'unknown' : c.reset.supported ? c.reset.methods.join(', ') || 'yes' : 'none'}`,
    );
    return lines.join('\n') + '\n';
  });
  return [table, ...details].join('\n');
}

function argsOf(controllers: readonly string[], options: SourceOptions & HideFlags): string {
  const parts: string[] = [];
  if (options.root !== '/') parts.push('--root', options.root);
  if (options.family) parts.push('--family', options.family);
  if (options.recording) parts.push('--recording', options.recording);
  if (options.sysroot) parts.push('--sysroot', options.sysroot);
  parts.push(...controllers);
  return parts.length > 0 ? ' ' + parts.join(' ') : '';
}
