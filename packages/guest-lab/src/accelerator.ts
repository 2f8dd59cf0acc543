/**
 * Which QEMU accelerator lab guests use. KVM is chosen only after it has actually run a guest: the
 * lab's own kernel and initramfs boot with `devgate.probe=1`, stage 1 prints a marker on the serial
 * console and powers off. Existing and opening /dev/kvm proves nothing: a PVM host (a KVM that runs
 * only PVM-enabled guest kernels) has a /dev/kvm on which `qemu -enable-kvm -S` starts, yet Debian's
 * kernel fails on it at once. Anything short of the marker within the deadline means TCG.
 *
 * `$DEVGATE_LAB_ACCEL` = `kvm` | `tcg` | `auto` (default) overrides the choice. Results are kept per
 * process and, for the current boot of the host, in the cache directory.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type GuestImage, defaultLabCacheDir } from './guest-image.js';

export type Accelerator = 'kvm' | 'tcg';
export type AcceleratorChoice = Accelerator | 'auto';

export interface ProbeOptions {
  readonly qemuBinary?: string;
  /** How long a KVM guest may take to print the marker. Default 20 s (a KVM boot takes about 1 s). */
  readonly timeoutMs?: number;
  readonly cacheDir?: string;
  readonly kvmDevice?: string;
}

export const PROBE_MARKER = 'devgate-lab: probe ok';

const memo = new Map<string, Promise<Accelerator>>();

/** `choice` (default `$DEVGATE_LAB_ACCEL`, else auto): kvm or tcg as given, auto by probing. */
export function chooseAccelerator(
  image: GuestImage,
  choice: AcceleratorChoice = (process.env['DEVGATE_LAB_ACCEL'] as AcceleratorChoice | undefined) || 'auto',
  options: ProbeOptions = {},
): Promise<Accelerator> {
  if (choice === 'kvm' || choice === 'tcg') return Promise.resolve(choice);
  return detectAccelerator(image, options);
}

export function detectAccelerator(image: GuestImage, options: ProbeOptions = {}): Promise<Accelerator> {
  const qemu = options.qemuBinary ?? process.env['DEVGATE_QEMU'] ?? 'qemu-system-x86_64';
  const key = `${qemu}\0${image.kernel}\0${image.initrd}`;
  let result = memo.get(key);
  if (!result) {
    result = probe(image, qemu, options);
    memo.set(key, result);
  }
  return result;
}

async function probe(image: GuestImage, qemu: string, options: ProbeOptions): Promise<Accelerator> {
  const kvm = options.kvmDevice ?? '/dev/kvm';
  try {
    fs.accessSync(kvm, fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return 'tcg';
  }
  // One probe per boot of the host: the answer cannot change before the next boot.
  const bootId = readOr('/proc/sys/kernel/random/boot_id')?.trim() ?? 'unknown';
  const cacheFile = path.join(options.cacheDir ?? defaultLabCacheDir(), `accel-${image.kernelVersion}-${bootId}`);
  const cached = readOr(cacheFile)?.trim();
  if (cached === 'kvm' || cached === 'tcg') return cached;
  const answer = (await kvmRunsGuest(image, qemu, options.timeoutMs ?? 20_000)) ? 'kvm' : 'tcg';
  try {
    fs.mkdirSync(path.dirname(cacheFile), { recursive: true });
    fs.writeFileSync(cacheFile, answer + '\n');
  } catch {
    // the cache is an optimisation
  }
  return answer;
}

/** Boots the lab kernel under KVM with the probe flag; true if the marker comes within `timeoutMs`. */
export function kvmRunsGuest(image: GuestImage, qemu: string, timeoutMs: number): Promise<boolean> {
  // prettier-ignore
  const args = [
    '-accel', 'kvm', '-cpu', 'host', '-machine', 'q35', '-m', '256', '-smp', '1',
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-monitor', 'none',
    '-serial', 'stdio',
    '-kernel', image.kernel, '-initrd', image.initrd,
    '-append', 'console=ttyS0 quiet panic=-1 rdinit=/init devgate.probe=1',
  ];
  return new Promise((resolve) => {
    let output = '';
    let settled = false;
    const child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const finish = (ok: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      child.stdout.destroy(); // a grandchild may still hold the pipes
      child.stderr.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      output += chunk;
      if (output.includes(PROBE_MARKER)) finish(true);
    });
    child.stderr.resume();
    child.on('error', () => finish(false));
    child.on('exit', () => finish(output.includes(PROBE_MARKER)));
  });
}

function readOr(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}
