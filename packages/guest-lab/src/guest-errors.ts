import { DevgateError, type ErrorCode } from '@devgate/core';

/**
 * The guest lab's errors. They are DevgateErrors (safe to show, stable codes) kept in this package:
 * the lab is a tool for tests and demos, and its failures are not part of devgate's device model.
 */
function define<P>(code: string, message: (p: P) => string, hint?: (p: P) => string) {
  const make = (p: P) => new DevgateError(code as ErrorCode, message(p), hint?.(p));
  return Object.assign(make, { code });
}

export const GuestErrors = {
  noGuestKernel: define<{ where: string; reason: string }>(
    'DG_GUEST_NO_KERNEL',
    (p) => `no kernel for lab guests in ${p.where}: ${p.reason}`,
    () => 'install one: apt-get install linux-image-amd64 busybox-static kmod xz-utils',
  ),
  imageFailed: define<{ reason: string }>(
    'DG_GUEST_IMAGE_FAILED',
    (p) => `cannot prepare the guest image: ${p.reason}`,
  ),
  bootFailed: define<{ name: string; reason: string; console?: string }>(
    'DG_GUEST_BOOT_FAILED',
    (p) => `guest '${p.name}' did not boot: ${p.reason}${p.console ? `\n--- console (last lines)\n${p.console}` : ''}`,
  ),
  gone: define<{ name: string; reason: string }>('DG_GUEST_GONE', (p) => `guest '${p.name}' is gone: ${p.reason}`),
  timeout: define<{ name: string; waitingFor: string; timeoutMs: number }>(
    'DG_GUEST_TIMEOUT',
    (p) => `guest '${p.name}': no ${p.waitingFor} within ${p.timeoutMs} ms`,
  ),
  agentError: define<{ name: string; reason: string }>(
    'DG_GUEST_AGENT',
    (p) => `guest '${p.name}': the agent says: ${p.reason}`,
  ),
  commandFailed: define<{ name: string; command: string; code: number | null; signal: string | null; stderr: string }>(
    'DG_GUEST_COMMAND_FAILED',
    (p) =>
      `guest '${p.name}': '${p.command}' ${p.signal ? `was killed by ${p.signal}` : `exited with ${p.code}`}` +
      (p.stderr.trim() ? `: ${p.stderr.trim().split('\n').slice(-5).join(' | ')}` : ''),
  ),
  noSuchDevice: define<{ name: string; device: string; known: readonly string[] }>(
    'DG_GUEST_NO_SUCH_DEVICE',
    (p) => `guest '${p.name}' has no lab device '${p.device}'`,
    (p) => (p.known.length ? `its lab devices: ${p.known.join(', ')}` : 'it has no lab devices'),
  ),
  ambiguousDevice: define<{ name: string; kind: string; ids: readonly string[] }>(
    'DG_GUEST_AMBIGUOUS_DEVICE',
    (p) => `guest '${p.name}' has ${p.ids.length} devices of kind ${p.kind}: ${p.ids.join(', ')}`,
    () => 'name one by its id',
  ),
  badDevice: define<{ spec: string; reason: string }>(
    'DG_GUEST_BAD_DEVICE',
    (p) => `bad lab device '${p.spec}': ${p.reason}`,
    () => 'kinds: usb-kbd, usb-mouse, usb-tablet, usb-storage, usb-serial',
  ),
  notAGuest: define<{ domain: string }>(
    'DG_GUEST_NOT_A_GUEST',
    (p) => `'${p.domain}' is not a lab guest with an OS`,
    () => "start one with 'devgate lab up --os NAME'",
  ),
};
