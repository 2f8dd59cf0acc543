/** Test support (not part of the package build): USBGuard's own rule parser as the reference. */
import { spawnSync } from 'node:child_process';

/**
 * The reference: USBGuard's own parser. CI installs it (apt-get install usbguard); without it this
 * suite fails rather than skips, because passing here is the claim that devgate reads rules as
 * USBGuard does.
 */
export const USBGUARD_RULE_PARSER = 'usbguard-rule-parser';
const ENV = { ...process.env, TZ: 'UTC', LC_ALL: 'C' };

export interface Verdict {
  readonly valid: boolean;
  /** The normalised rule; '' for a comment-only line. */
  readonly output?: string;
  readonly detail: string;
}

export function runUsbguard(args: readonly string[]) {
  const result = spawnSync(USBGUARD_RULE_PARSER, args, { env: ENV, maxBuffer: 64 * 1024 * 1024 });
  if (result.error) {
    throw new Error(`cannot run ${USBGUARD_RULE_PARSER} (apt-get install usbguard): ${result.error.message}`);
  }
  return { status: result.status, stdout: result.stdout.toString('utf8'), stderr: result.stderr.toString('utf8') };
}

/** `usbguard-rule-parser -- RULE`: rc 0 and "INPUT: RULE\nOUTPUT: TEXT\n", or rc 1 and a message. */
export function usbguardVerdict(rule: string): Verdict {
  const { status, stdout, stderr } = runUsbguard(['--', rule]);
  if (status !== 0) return { valid: false, detail: stderr.trim() };
  const prefix = `INPUT: ${rule}\nOUTPUT: `;
  if (!stdout.startsWith(prefix) || !stdout.endsWith('\n')) {
    throw new Error(`unexpected output from ${USBGUARD_RULE_PARSER}: ${JSON.stringify(stdout.slice(0, 200))}`);
  }
  return { valid: true, output: stdout.slice(prefix.length, -1), detail: '' };
}
