import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DevgateError } from '@devgate/core';
import { hostDataPath } from './host-data-path';
import { type SysfsWrite, bindGroupToVfio, releaseGroupFromVfio } from './pci-vfio';
import { LOCAL_ROOTS, rootsUnder } from './sysfs-reader';

interface FakeFunction {
  readonly sbdf: string;
  readonly ids: string; // vendor:device
  readonly cls: string; // 0x0c0330
  readonly driver?: string;
  readonly group?: number;
}

/**
 * A sysfs tree laid out as the kernel's (bus/pci/devices links into devices/, driver and iommu_group
 * links, iommu_groups/N/devices), and a model of what the kernel does on the writes devgate makes:
 * driver_override is kept, unbind drops the driver link, drivers_probe binds the override or the
 * device's own driver. Every write is logged, in order.
 */
class FakePciHost {
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-vfio-'));
  readonly sys = path.join(this.root, 'sys');
  readonly writes: string[] = [];
  /** Devices the fake kernel refuses to bind to vfio-pci (a driver that will not let go). */
  readonly stubborn = new Set<string>();
  private readonly native = new Map<string, string | undefined>();

  constructor(functions: readonly FakeFunction[], { iommu = true, vfio = true } = {}) {
    const drivers = new Set(['pcieport', ...functions.map((f) => f.driver).filter((d): d is string => !!d)]);
    if (vfio) drivers.add('vfio-pci');
    for (const d of drivers) fs.mkdirSync(path.join(this.sys, 'bus/pci/drivers', d), { recursive: true });
    fs.writeFileSync(path.join(this.sys, 'bus/pci/drivers_probe'), '');
    fs.mkdirSync(path.join(this.sys, 'kernel/iommu_groups'), { recursive: true });
    for (const f of functions) {
      const dir = path.join(this.sys, 'devices/pci0000:00', f.sbdf);
      fs.mkdirSync(dir, { recursive: true });
      const [vendor, device] = f.ids.split(':');
      fs.writeFileSync(path.join(dir, 'vendor'), `0x${vendor}\n`);
      fs.writeFileSync(path.join(dir, 'device'), `0x${device}\n`);
      fs.writeFileSync(path.join(dir, 'class'), `${f.cls}\n`);
      fs.writeFileSync(path.join(dir, 'driver_override'), '(null)\n');
      fs.mkdirSync(path.join(this.sys, 'bus/pci/devices'), { recursive: true });
      fs.symlinkSync(`../../../devices/pci0000:00/${f.sbdf}`, path.join(this.sys, 'bus/pci/devices', f.sbdf));
      this.native.set(f.sbdf, f.driver);
      if (f.driver) this.bind(f.sbdf, f.driver);
      if (iommu && f.group !== undefined) {
        const members = path.join(this.sys, 'kernel/iommu_groups', String(f.group), 'devices');
        fs.mkdirSync(members, { recursive: true });
        fs.symlinkSync(`../../../../devices/pci0000:00/${f.sbdf}`, path.join(members, f.sbdf));
        fs.symlinkSync(`../../../kernel/iommu_groups/${f.group}`, path.join(dir, 'iommu_group'));
      }
    }
  }

  get roots() {
    return rootsUnder(this.root);
  }

  driver(sbdf: string): string | undefined {
    try {
      return path.basename(fs.readlinkSync(path.join(this.sys, 'bus/pci/devices', sbdf, 'driver')));
    } catch {
      return undefined;
    }
  }

  readonly write: SysfsWrite = async (file, text) => {
    const relative = path.relative(this.sys, file);
    this.writes.push(`${relative} <- ${JSON.stringify(text)}`);
    const device = (sbdf: string) => path.join(this.sys, 'bus/pci/devices', sbdf);
    if (relative.endsWith('/driver_override')) {
      fs.writeFileSync(file, text === '\n' || text === '' ? '(null)\n' : `${text}\n`);
    } else if (relative.endsWith('/driver/unbind')) {
      fs.unlinkSync(path.join(device(text), 'driver'));
    } else if (relative === 'bus/pci/drivers_probe') {
      if (this.driver(text)) return;
      const override = fs.readFileSync(path.join(device(text), 'driver_override'), 'utf8').trim();
      const wanted = override !== '(null)' ? override : this.native.get(text);
      if (!wanted || (wanted === 'vfio-pci' && this.stubborn.has(text))) return;
      if (fs.existsSync(path.join(this.sys, 'bus/pci/drivers', wanted))) this.bind(text, wanted);
    } else {
      throw new Error(`unexpected write to ${relative}`);
    }
  };

  private bind(sbdf: string, driver: string): void {
    fs.symlinkSync(`../../../bus/pci/drivers/${driver}`, path.join(this.sys, 'devices/pci0000:00', sbdf, 'driver'));
  }

  dispose(): void {
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

/** The Intel PCH layout: the xHCI 00:14.0 shares group 5 with the thermal subsystem 00:14.2. */
const PCH: FakeFunction[] = [
  { sbdf: '0000:00:14.0', ids: '8086:a12f', cls: '0x0c0330', driver: 'xhci_hcd', group: 5 },
  { sbdf: '0000:00:14.2', ids: '8086:a131', cls: '0x118000', driver: 'intel_pch_thermal', group: 5 },
  { sbdf: '0000:00:1c.0', ids: '8086:a110', cls: '0x060400', driver: 'pcieport', group: 7 },
  { sbdf: '0000:00:17.0', ids: '8086:a102', cls: '0x010601', driver: 'ahci', group: 6 },
];
const XHCI = { vendorId: '8086', deviceId: 'a12f', label: 'dom0:00_14.0' };

async function codeOf(work: Promise<unknown>): Promise<string> {
  try {
    await work;
  } catch (error) {
    return error instanceof DevgateError ? `${error.code}: ${error.message}` : `not coded: ${String(error)}`;
  }
  return 'no error';
}

describe('VFIO binding of an IOMMU group (host data path)', () => {
  let host: FakePciHost;
  afterEach(() => host.dispose());

  it('binds every endpoint of the group in the kernel’s order, and gives them back on request', async () => {
    host = new FakePciHost(PCH);
    const binding = await bindGroupToVfio(host.roots, '0000:00:14.0', XHCI, { write: host.write });
    expect(binding).toEqual({
      group: '5',
      members: [
        { sbdf: '0000:00:14.0', driver: 'xhci_hcd', action: 'bound' },
        { sbdf: '0000:00:14.2', driver: 'intel_pch_thermal', action: 'bound' },
      ],
    });
    expect(host.writes).toEqual([
      'bus/pci/devices/0000:00:14.0/driver_override <- "vfio-pci"',
      'bus/pci/devices/0000:00:14.0/driver/unbind <- "0000:00:14.0"',
      'bus/pci/drivers_probe <- "0000:00:14.0"',
      'bus/pci/devices/0000:00:14.2/driver_override <- "vfio-pci"',
      'bus/pci/devices/0000:00:14.2/driver/unbind <- "0000:00:14.2"',
      'bus/pci/drivers_probe <- "0000:00:14.2"',
    ]);
    expect([host.driver('0000:00:14.0'), host.driver('0000:00:14.2'), host.driver('0000:00:17.0')]).toEqual([
      'vfio-pci',
      'vfio-pci',
      'ahci', // another group: untouched
    ]);

    host.writes.length = 0;
    const released = await releaseGroupFromVfio(host.roots, '0000:00:14.0', 'dom0:00_14.0', { write: host.write });
    expect(released).toEqual([
      { sbdf: '0000:00:14.0', driver: 'xhci_hcd' },
      { sbdf: '0000:00:14.2', driver: 'intel_pch_thermal' },
    ]);
    expect(host.writes.slice(0, 3)).toEqual([
      'bus/pci/devices/0000:00:14.0/driver_override <- "\\n"',
      'bus/pci/devices/0000:00:14.0/driver/unbind <- "0000:00:14.0"',
      'bus/pci/drivers_probe <- "0000:00:14.0"',
    ]);
    expect(await codeOf(releaseGroupFromVfio(host.roots, '0000:00:14.0', 'dom0:00_14.0', { write: host.write }))).toBe(
      'DG_PCI_NOT_ON_VFIO: dom0:00_14.0 is not held by vfio-pci (its driver is xhci_hcd); there is nothing to give back',
    );
  });

  it('leaves a bridge in the group with pcieport, and skips a member already on vfio-pci', async () => {
    host = new FakePciHost([
      { sbdf: '0000:00:1c.0', ids: '8086:a110', cls: '0x060400', driver: 'pcieport', group: 9 },
      { sbdf: '0000:00:1c.4', ids: '8086:a114', cls: '0x0c0330', driver: 'vfio-pci', group: 9 },
      { sbdf: '0000:00:1c.5', ids: '1b21:1242', cls: '0x0c0330', driver: 'xhci_hcd', group: 9 },
    ]);
    const binding = await bindGroupToVfio(
      host.roots,
      '0000:00:1c.5',
      { vendorId: '1b21', deviceId: '1242', label: 'x' },
      { write: host.write },
    );
    expect(binding.members.map((m) => `${m.sbdf} ${m.action}`)).toEqual([
      '0000:00:1c.0 bridge',
      '0000:00:1c.4 already',
      '0000:00:1c.5 bound',
    ]);
    expect(host.driver('0000:00:1c.0')).toBe('pcieport');
    expect(host.writes.filter((w) => w.includes('1c.0') || w.includes('1c.4'))).toEqual([]);
  });

  it('refuses with DG_NO_IOMMU before unbinding anything when the host has no IOMMU', async () => {
    host = new FakePciHost(PCH, { iommu: false });
    expect(await codeOf(bindGroupToVfio(host.roots, '0000:00:14.0', XHCI, { write: host.write }))).toMatch(
      /^DG_NO_IOMMU: Device 0000:00:14.0 cannot be given to a VM: this host has no IOMMU \(.*iommu_groups is empty\); nothing was unbound$/,
    );
    expect(host.writes).toEqual([]);
    expect(host.driver('0000:00:14.0')).toBe('xhci_hcd');
  });

  it('refuses another device at the address (DG_DEVICE_CHANGED) and a missing vfio-pci, before any write', async () => {
    host = new FakePciHost(PCH, { vfio: false });
    expect(
      await codeOf(bindGroupToVfio(host.roots, '0000:00:14.0', { ...XHCI, deviceId: 'a2af' }, { write: host.write })),
    ).toBe(
      'DG_DEVICE_CHANGED: Device dom0:00_14.0 is no longer the device that was listed (0000:00:14.0 is 8086:a12f now, listed as 8086:a2af); nothing was attached',
    );
    expect(await codeOf(bindGroupToVfio(host.roots, '0000:00:14.0', XHCI, { write: host.write }))).toMatch(
      /^DG_VFIO_UNAVAILABLE: the vfio-pci driver is not available: .*vfio-pci does not exist$/,
    );
    expect(host.writes).toEqual([]);
  });

  it('gives the group back to its drivers when one member cannot be bound', async () => {
    host = new FakePciHost(PCH);
    host.stubborn.add('0000:00:14.2');
    expect(
      await codeOf(bindGroupToVfio(host.roots, '0000:00:14.0', XHCI, { write: host.write, bindTimeoutMs: 50 })),
    ).toBe('DG_PCI_BIND_FAILED: cannot bind 0000:00:14.2 to vfio-pci: after drivers_probe its driver is none');
    expect([host.driver('0000:00:14.0'), host.driver('0000:00:14.2')]).toEqual(['xhci_hcd', 'intel_pch_thermal']);
  });

  it('through hostDataPath: the listed ids are checked before anything else', async () => {
    host = new FakePciHost(PCH);
    const device = {
      port: { devclass: 'pci', backend: 'dom0', portId: '00_14.0' },
      deviceId: 'x',
      interfaces: [],
      data: {},
    };
    const spec = {
      kind: 'vfio-pci',
      params: { host: '0000:00:14.0', vendorId: '8086', deviceId: 'ffff' },
      options: {},
    };
    expect(await codeOf(hostDataPath(host.roots, device, spec))).toMatch(/^DG_DEVICE_CHANGED/);
  });
});

// This machine has no IOMMU (no /sys/kernel/iommu_groups entries): a real attach is refused before
// anything is written. The writer fails the test on any write, so the real host is never touched.
const noIommuHere =
  !fs.existsSync('/sys/kernel/iommu_groups') || fs.readdirSync('/sys/kernel/iommu_groups').length === 0;
const someFunction = fs.existsSync('/sys/bus/pci/devices')
  ? fs.readdirSync('/sys/bus/pci/devices').sort().pop()
  : undefined;
(noIommuHere && someFunction ? it : it.skip)(
  `on this machine's real /sys (no IOMMU): DG_NO_IOMMU for ${someFunction}, with nothing written`,
  async () => {
    const dir = path.join('/sys/bus/pci/devices', someFunction!);
    const id = (name: string) => fs.readFileSync(path.join(dir, name), 'utf8').trim().slice(2);
    const driverBefore = fs.existsSync(path.join(dir, 'driver'))
      ? fs.readlinkSync(path.join(dir, 'driver'))
      : undefined;
    const writes: string[] = [];
    const error = await codeOf(
      bindGroupToVfio(
        LOCAL_ROOTS,
        someFunction!,
        { vendorId: id('vendor'), deviceId: id('device'), label: `dom0:${someFunction}` },
        { write: async (file) => void writes.push(file), loadModule: false },
      ),
    );
    expect(error).toMatch(/^DG_NO_IOMMU: .*this host has no IOMMU .*nothing was unbound$/);
    expect(writes).toEqual([]);
    expect(fs.existsSync(path.join(dir, 'driver')) ? fs.readlinkSync(path.join(dir, 'driver')) : undefined).toBe(
      driverBefore,
    );
  },
);
