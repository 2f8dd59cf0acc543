import { firstValueFrom, take, toArray } from 'rxjs';
import {
  type DeviceClassDriver,
  type DeviceInfo,
  type DeviceSource,
  type HostTree,
  PLUGIN_API_VERSION,
  isInterfaceCode,
  portKey,
} from '@devgate/core';
import { of } from 'rxjs';
import { UNSAFE_CHARACTERS, allStrings, hostileTree } from './hostile.js';

export interface ConformanceSubject {
  createDriver(): DeviceClassDriver;
  /** Host trees that hold devices of the driver's class, named (recordings of real machines). */
  trees(): Record<string, HostTree>;
  /** Longest text a driver may emit (sanitizeText's bound, or a path). */
  maxStringLength?: number;
}

/** A source that replays one tree, for driving a driver without I/O. */
export function staticSource(tree: HostTree, backend = 'dom0', id = 'static'): DeviceSource {
  return { id, backend, hotplug: 'static', trees$: of(tree), dispose: () => undefined };
}

async function discoverOnce(driver: DeviceClassDriver, source: DeviceSource): Promise<readonly DeviceInfo[]> {
  return firstValueFrom(driver.discover(source));
}

/**
 * The contract every device-class driver keeps, as a jest suite. Third-party drivers call it from a
 * spec file with their own recordings: `describeDriverConformance('usb', { createDriver, trees })`.
 */
export function describeDriverConformance(name: string, subject: ConformanceSubject): void {
  describe(`driver conformance: ${name}`, () => {
    it('has an explicit id and a manifest for this plugin API', () => {
      const driver = subject.createDriver();
      expect(driver.id).toMatch(/^[a-z][a-z0-9-]*$/);
      expect(driver.manifest.apiVersion).toBe(PLUGIN_API_VERSION);
      expect(driver.manifest.description.length).toBeGreaterThan(0);
    });

    describe.each(Object.entries(subject.trees()))('on %s', (_label, tree) => {
      it('emits one snapshot per tree, with unique ports of its own class and backend', async () => {
        const driver = subject.createDriver();
        const snapshots = await firstValueFrom(
          driver.discover(staticSource(tree, 'backend-x')).pipe(take(2), toArray()),
        );
        expect(snapshots).toHaveLength(1);
        const devices = snapshots[0];
        expect(new Set(devices.map((d) => portKey(d.port))).size).toBe(devices.length);
        for (const device of devices) {
          expect(device.port.devclass).toBe(driver.id);
          expect(device.port.backend).toBe('backend-x');
          expect(device.port.portId).not.toBe('');
          expect(device.deviceId).not.toBe('');
          for (const code of device.interfaces) expect(isInterfaceCode(code)).toBe(true);
        }
      });

      it('is deterministic: the same tree gives the same devices', async () => {
        const driver = subject.createDriver();
        const a = await discoverOnce(driver, staticSource(tree));
        const b = await discoverOnce(driver, staticSource(tree));
        expect(JSON.stringify(b)).toBe(JSON.stringify(a));
      });

      it('keeps hostile device strings inert and bounded', async () => {
        const driver = subject.createDriver();
        const devices = await discoverOnce(driver, staticSource(hostileTree(tree)));
        for (const [at, text] of allStrings(devices)) {
          if (UNSAFE_CHARACTERS.test(text)) throw new Error(`unsafe character at ${at}: ${JSON.stringify(text)}`);
          expect(text.length).toBeLessThanOrEqual(subject.maxStringLength ?? 4096);
        }
      });
    });
  });
}
