import { Subject } from 'rxjs';
import { type DeviceInfo } from './device-model';
import { type DeviceEvent, snapshotsToEvents } from './events';

const dev = (portId: string, extra: Partial<DeviceInfo> = {}): DeviceInfo => ({
  port: { devclass: 'block', backend: 'dom0', portId },
  deviceId: `id-${portId}`,
  interfaces: ['b******'],
  data: {},
  ...extra,
});
const attached = (frontend: string) => ({ attachment: { frontend, options: {} } });

function collect(snapshots: DeviceInfo[][]): string[] {
  const input = new Subject<readonly DeviceInfo[]>();
  const seen: string[] = [];
  input.pipe(snapshotsToEvents()).subscribe((e: DeviceEvent) => {
    seen.push('device' in e ? `${e.type}:${e.device.port.portId}` : e.type);
  });
  snapshots.forEach((s) => input.next(s));
  return seen;
}

describe('snapshotsToEvents', () => {
  it('reports additions and removals', () => {
    expect(collect([[dev('sda')], [dev('sda'), dev('sdb')], [dev('sdb')]])).toEqual([
      'added:sda',
      'added:sdb',
      'removed:sda',
    ]);
  });

  it('reports attach and detach as their own events', () => {
    expect(collect([[dev('sda')], [dev('sda', attached('work'))], [dev('sda')]])).toEqual([
      'added:sda',
      'attached:sda',
      'detached:sda',
    ]);
  });

  it('reports a device that vanishes while attached as detached, then removed', () => {
    expect(collect([[dev('sda', attached('work'))], []])).toEqual([
      'added:sda',
      'attached:sda',
      'detached:sda',
      'removed:sda',
    ]);
  });

  it('reports changed only when something other than the attachment changed', () => {
    expect(collect([[dev('sda')], [dev('sda')], [dev('sda', { data: { label: 'NEW' } })]])).toEqual([
      'added:sda',
      'changed:sda',
    ]);
  });

  it('compares rebuilt devices as JSON data: key order, absent keys and NaN are no change', () => {
    const a = dev('sda', { data: { size: NaN, label: 'A' }, serial: undefined });
    const b = { ...dev('sda'), data: { label: 'A', size: NaN } };
    expect(collect([[a], [b], [dev('sda', { data: { label: 'A', size: 1 } })]])).toEqual(['added:sda', 'changed:sda']);
  });

  it('keeps its view of the previous snapshot right across additions, removals and reorders', () => {
    const [sda, sdb, sdc, sdd] = ['sda', 'sdb', 'sdc', 'sdd'].map((p) => dev(p));
    expect(collect([[sda, sdb, sdc], [sdc, sda], [sdd, sdc, sdb], [sdb, sdd, sdc], []])).toEqual([
      'added:sda',
      'added:sdb',
      'added:sdc',
      'removed:sdb',
      'added:sdd',
      'added:sdb',
      'removed:sda',
      'removed:sdb',
      'removed:sdd',
      'removed:sdc',
    ]);
  });

  it('moving from one frontend to another is a detach then an attach', () => {
    expect(collect([[dev('sda', attached('a'))], [dev('sda', attached('b'))]])).toEqual([
      'added:sda',
      'attached:sda',
      'detached:sda',
      'attached:sda',
    ]);
  });
});
