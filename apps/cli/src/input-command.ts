/**
 * `devgate input ...` (and `qvm-device input ...`): devgate's own commands for input devices, next to
 * the Qubes-compatible list/attach/detach/info:
 *
 *   devgate input policy check FILE|DIR...        every problem as FILE:LINE:COLUMN: message; exit 1 if any
 *   devgate input policy defaults USBVM [--target VM] [--mouse ask|allow|deny] [--keyboard ...]
 *   devgate input policy explain [--policy DIR|FILE]... [--target VM] [--recording FILE --backend sys-usb]
 *
 * The policy is Qubes' (qubes.InputKeyboard, InputMouse, InputTablet) in either of its formats: a
 * `.policy` file or directory in the policy.d format, or an old per-service file named after its
 * service (`qubes.InputMouse`, `qubes.InputMouse+ARG`); `--format` says which when the name does not.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Command, Option } from 'commander';
import { Errors, type DeviceJson } from '@devgate/core';
import {
  DEFAULT_INPUT_POLICY_DIR,
  decideInputDevice,
  effectiveInputPolicy,
  installerDefaultPolicy,
  isPolicyRule,
  loadPolicy,
  parsePolicyText,
  serviceOfFileName,
  type PolicyAction,
  type PolicyIssue,
} from '@devgate/driver-input';
import { type Io } from './io.js';
import { type AccessOptions, withAccess } from './device-access.js';
import { formatColumns } from './format.js';
import { addHostOptions } from './host-options.js';

const ACTIONS = ['ask', 'allow', 'deny'] as const;

interface CheckOptions {
  readonly format?: 'policy.d' | 'qubes-rpc';
  readonly service?: string;
}

/** Adds the input class's own subcommands to `input` (the caller wires `input` into the programs). */
export function addInputCommands(input: Command, io: Io): void {
  const policy = input
    .command('policy')
    .description("Qubes' input policy: qubes.InputKeyboard, qubes.InputMouse, qubes.InputTablet");

  policy
    .command('check')
    .description('check policy files or policy.d directories: every problem as FILE:LINE:COLUMN: message')
    .argument('FILE...', 'a .policy file, a policy.d directory, or an old per-service file (qubes.InputMouse)')
    .addOption(
      new Option('--format <format>', 'the format, when the file name does not tell').choices([
        'policy.d',
        'qubes-rpc',
      ]),
    )
    .option('--service <name[+ARG]>', 'the service of an old-format file not named after it')
    .action((files: string[], options: CheckOptions) => check(files, options, io));

  policy
    .command('defaults')
    .description("print what Qubes' installer writes for a USB qube (50-config-input.policy)")
    .argument('USBVM', 'the backend domain that holds the input devices')
    .option('--target <vm>', 'where its input goes (Qubes: dom0)', 'dom0')
    .addOption(new Option('--mouse <action>', 'the mouse action').choices([...ACTIONS]).default('ask'))
    .addOption(new Option('--keyboard <action>', 'the keyboard action').choices([...ACTIONS]).default('deny'))
    .action((usbVm: string, options: { target: string; mouse: PolicyAction; keyboard: PolicyAction }) =>
      io.out(installerDefaultPolicy(usbVm, options)),
    );

  addHostOptions(
    policy
      .command('explain')
      .description('what the policy decides for each input device of the backends, one line per physical device'),
  )
    .option(
      '--policy <path>',
      `a policy.d directory or a policy file (default ${DEFAULT_INPUT_POLICY_DIR})`,
      collect,
      [],
    )
    .option('--target <vm>', 'where the input would go (Qubes: dom0)', 'dom0')
    .option('--json', 'print JSON')
    .action((options: AccessOptions & { policy: string[]; target: string; json?: boolean }) => explain(options, io));
}

function check(paths: readonly string[], options: CheckOptions, io: Io): void {
  const issues: PolicyIssue[] = [];
  for (const file of paths) {
    const stat = fs.statSync(file, { throwIfNoEntry: false });
    if (!stat) throw Errors.inputPolicyUnreadable({ file, reason: 'no such file or directory' });
    let found: readonly PolicyIssue[];
    let rules: number;
    if (stat.isDirectory()) {
      const loaded = loadPolicy({ dirs: [file] });
      found = loaded.issues;
      rules = loaded.rules.length;
    } else if (options.format || options.service) {
      const named = options.service ? serviceOfFileName(options.service) : undefined;
      if (options.service && !named)
        throw Errors.badOption({ option: '--service', reason: `not a service: ${options.service}` });
      const format = options.format ?? 'qubes-rpc';
      const parsed = parsePolicyText(
        readText(file),
        file,
        format === 'policy.d' ? { format } : { format, ...(named ?? serviceOfFileName(path.basename(file)) ?? {}) },
      );
      found = parsed.issues;
      rules = parsed.entries.filter(isPolicyRule).length;
    } else {
      const loaded = loadPolicy({ files: [file] });
      found = loaded.issues;
      rules = loaded.rules.length;
    }
    issues.push(...found);
    if (found.length === 0) io.out(`${file}: ok (${rules} rule${rules === 1 ? '' : 's'})\n`);
  }
  if (issues.length === 0) return;
  io.err(issues.map((i) => `${i.file}:${i.line}:${i.column}: ${i.message}\n`).join(''));
  throw Errors.inputPolicyInvalid({ file: paths.join(', '), count: issues.length });
}

async function explain(
  options: AccessOptions & { policy: string[]; target: string; json?: boolean },
  io: Io,
): Promise<void> {
  await withAccess(options, io, async (access) => {
    const devices = await access.list({ devclass: 'input', all: true });
    const domains = await access.domains();
    const backends = [...new Set(devices.map((d) => d.backend))];
    const locations =
      options.policy.length > 0 ? splitLocations(options.policy) : { dirs: [DEFAULT_INPUT_POLICY_DIR], files: [] };
    const where = [...locations.dirs, ...locations.files].join(', ');
    const policy = effectiveInputPolicy(locations, backends, options.target);
    if (policy.issues.length > 0) {
      io.err(policy.issues.map((i) => `${i.file}:${i.line}:${i.column}: ${i.message}\n`).join(''));
      throw Errors.inputPolicyInvalid({ file: where, count: policy.issues.length });
    }
    const rows = devices.map((device: DeviceJson) => {
      if (device.backend === 'dom0') {
        return {
          device,
          verdict: '-',
          events: '',
          why: "dom0's own devices are not proxied; attach them to a VM instead",
        };
      }
      const decision = decideInputDevice(policy.rules, device, {
        source: device.backend,
        target: options.target,
        domains: [...new Set([...domains, 'dom0', options.target])],
      });
      return { device, verdict: decision.verdict, events: decision.events.join(','), why: decision.reason };
    });
    if (options.json) {
      io.out(
        JSON.stringify(
          rows.map((r) => ({ port: r.device.port, verdict: r.verdict, events: r.events, reason: r.why })),
          null,
          2,
        ) + '\n',
      );
      return;
    }
    if (policy.defaults) io.notice(`no input policy at ${where}; Qubes' installer defaults apply\n`);
    io.out(
      formatColumns([
        ['BACKEND:DEVID', 'DESCRIPTION', 'VERDICT', 'EVENTS', 'WHY'],
        ...rows.map((r) => [r.device.port, r.device.description, r.verdict, r.events || '-', r.why]),
      ]),
    );
  });
}

function splitLocations(paths: readonly string[]): { dirs: string[]; files: string[] } {
  const dirs: string[] = [];
  const files: string[] = [];
  for (const p of paths) (fs.statSync(p, { throwIfNoEntry: false })?.isDirectory() ? dirs : files).push(p);
  return { dirs, files };
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw Errors.inputPolicyUnreadable({ file, reason: (error as NodeJS.ErrnoException).code ?? String(error) });
  }
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
