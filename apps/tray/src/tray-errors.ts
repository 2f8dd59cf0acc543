import { DevgateError, type ErrorCode } from '@devgate/core';

/**
 * The tray's own errors, as the guest lab keeps its own (packages/guest-lab/src/guest-errors.ts):
 * DevgateErrors with stable codes, for what fails on the desktop rather than in devgated.
 */
function define<P>(code: string, message: (p: P) => string, hint?: (p: P) => string) {
  const make = (p: P) => new DevgateError(code as ErrorCode, message(p), hint?.(p));
  return Object.assign(make, { code });
}

export const TrayErrors = {
  settingsCommandFailed: define<{ command: string; reason: string }>(
    'DG_TRAY_SETTINGS',
    (p) => `${p.command}: ${p.reason}`,
    () => 'choose the command with devgate-tray --settings-command',
  ),
};
