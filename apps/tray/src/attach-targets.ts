import { type DeviceJson } from '@devgate/core';
import { type AssignmentJson } from './daemon-api.js';

/** What the tray knows about VMs when it offers "Attach to <vm>". */
export interface DomainsView {
  /** The domains devgated says can take a device now (GET /v1/domains, `running`). */
  readonly domains: readonly string[];
  readonly assignments: readonly AssignmentJson[];
  /** Domains that hold devices (GET /v1/health sources): never a target. */
  readonly backends: readonly string[];
}

const specificity = (a: AssignmentJson) => (a.portId !== '*' ? 2 : 0) + (a.deviceId !== '*' ? 1 : 0);

/** The assignments naming this device, most specific first (Qubes' order). */
export function assignmentsFor(device: DeviceJson, assignments: readonly AssignmentJson[]): AssignmentJson[] {
  return assignments
    .filter(
      (a) =>
        a.devclass === device.class &&
        a.backend === device.backend &&
        (a.portId === '*' || a.portId === device.portId) &&
        (a.deviceId === '*' || a.deviceId === device.deviceId),
    )
    .sort((a, b) => specificity(b) - specificity(a));
}

/**
 * The VMs to offer a device to, most relevant first: those an assignment names ("preferred"), then
 * every other domain; never a backend, never where it already is; at most `max`.
 */
export function attachTargets(device: DeviceJson, view: DomainsView, max = Infinity): string[] {
  const excluded = new Set([device.backend, ...view.backends]);
  if (device.attachment) excluded.add(device.attachment.frontend);
  const ordered = [...assignmentsFor(device, view.assignments).map((a) => a.frontend), ...view.domains];
  const result: string[] = [];
  for (const name of ordered) {
    if (result.length >= max) break;
    if (!excluded.has(name) && !result.includes(name)) result.push(name);
  }
  return result;
}

/** The subset of `targets` that an assignment names (shown as preferred). */
export function preferredTargets(device: DeviceJson, view: DomainsView): Set<string> {
  return new Set(assignmentsFor(device, view.assignments).map((a) => a.frontend));
}
