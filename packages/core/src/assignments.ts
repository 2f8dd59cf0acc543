import { type DeviceClassId, type DeviceInfo, type DomainName } from './device-model.js';
import { type InterfaceCode, interfaceMatches } from './interfaces.js';

export const ASSIGNMENT_MODES = ['manual', 'ask-to-attach', 'auto-attach', 'required'] as const;
export type AssignmentMode = (typeof ASSIGNMENT_MODES)[number];

/** (port or `*`, device id or `*`, never both `*`) -> frontend, with a mode and options. */
export interface DeviceAssignment {
  readonly devclass: DeviceClassId;
  readonly backend: DomainName;
  readonly portId: string;
  readonly deviceId: string;
  readonly frontend: DomainName;
  readonly mode: AssignmentMode;
  readonly options: Readonly<Record<string, string>>;
}

export function assignmentMatches(assignment: DeviceAssignment, device: DeviceInfo): boolean {
  return (
    assignment.devclass === device.port.devclass &&
    assignment.backend === device.port.backend &&
    (assignment.portId === '*' || assignment.portId === device.port.portId) &&
    (assignment.deviceId === '*' || assignment.deviceId === device.deviceId)
  );
}

/** Qubes' order, most specific first: port and device, then port only, then device only. */
export function specificity(assignment: DeviceAssignment): number {
  return (assignment.portId !== '*' ? 2 : 0) + (assignment.deviceId !== '*' ? 1 : 0);
}

export function bySpecificity(a: DeviceAssignment, b: DeviceAssignment): number {
  return specificity(b) - specificity(a);
}

/** The assignments that name a device, most specific first (stable: ties keep their order). */
export function assignmentsFor<A extends DeviceAssignment>(assignments: readonly A[], device: DeviceInfo): A[] {
  return assignments.filter((a) => assignmentMatches(a, device)).sort(bySpecificity);
}

/** Interface patterns a frontend may never receive (Qubes' deny list). */
export interface DenyList {
  readonly frontend: DomainName;
  readonly patterns: readonly InterfaceCode[];
}

export function isDenied(deny: DenyList, device: DeviceInfo): boolean {
  return device.interfaces.some((code) => deny.patterns.some((pattern) => interfaceMatches(pattern, code)));
}
