import { promises as fs, statSync } from 'node:fs';
import { join } from 'node:path';
import { Connector, Errors, Kernel } from '@devgate/core';
import { readRegistry, readRegistrySync, updateRegistry, writeRegistry } from './domain-registry.js';
import { labDown, labUp } from './lab.js';
import { QemuConnector } from './qemu-connector.js';
import { qemuContributions, qemuModule } from './qemu-module.js';
import { Cleanup, processExists, waitUntil } from './testing/fixtures.js';

jest.setTimeout(30_000);

const cleanup = new Cleanup();
let registryFile: string;
let dir: string;
let connector: QemuConnector;
let pid: number;

beforeAll(async () => {
  dir = await cleanup.tempDir();
  registryFile = join(dir, 'domains.json');
  [{ pid }] = await labUp(['front'], { registryFile, stateDir: join(dir, 'lab') });
  cleanup.pid(pid);
  cleanup.defer(() => labDown(undefined, { registryFile }));
});
beforeEach(() => {
  connector = new QemuConnector({ registryFile });
});
afterEach(() => connector.dispose());
afterAll(() => cleanup.run());

describe('QemuConnector', () => {
  it('counts a paused (prelaunch) domain as running', async () => {
    await expect(connector.queryStatus('front')).resolves.toMatchObject({ status: 'prelaunch', running: false });
    await expect(connector.isRunning('front')).resolves.toBe(true);
  });

  it('manages the domains of its registry, not dom0', () => {
    expect(connector.domains()).toEqual(['front']);
    expect(connector.manages('front')).toBe(true);
    expect(connector.manages('dom0')).toBe(false);
    expect(connector.manages('toString')).toBe(false);
  });

  it('refuses kinds it cannot attach, and reports no attachments when there are none', async () => {
    const port = { backend: 'dom0', portId: 'sda', devclass: 'block' };
    await expect(
      connector.attach('front', port, { kind: 'pci', params: {}, options: {} }, 'id-sda'),
    ).rejects.toMatchObject({
      code: 'DG_UNSUPPORTED',
    });
    await expect(connector.detach('front', port)).rejects.toMatchObject({ code: 'DG_NOT_ATTACHED' });
    await expect(connector.attachments()).resolves.toEqual([]);
  });

  it('counts dom0 as running and rejects unknown domains', async () => {
    await expect(connector.isRunning('dom0')).resolves.toBe(true);
    await expect(connector.isRunning('nowhere')).rejects.toMatchObject({
      code: 'DG_NO_SUCH_DOMAIN',
      message: "no such domain: 'nowhere'",
    });
  });

  it('passes query-pci through: the xHCI controller and both root ports', async () => {
    const buses = await connector.queryPci('front');
    const ids = buses.flatMap((bus) => bus.devices.map((d) => d.qdev_id));
    expect(ids).toEqual(expect.arrayContaining(['xhci', 'rp1', 'rp2']));
    const xhci = buses[0].devices.find((d) => d.qdev_id === 'xhci')!;
    expect(xhci.id).toMatchObject({ vendor: 0x1b36, device: 0x000d }); // Red Hat QEMU xHCI
  });

  it('passes query-block through: a USB stick added over QMP shows up', async () => {
    const image = join(dir, 'stick.img');
    await fs.writeFile(image, Buffer.alloc(1024 * 1024));
    await expect(connector.queryBlock('front')).resolves.toEqual([]);

    const node = { driver: 'raw', 'node-name': 'stick', file: { driver: 'file', filename: image } };
    await connector.execute('front', 'blockdev-add', node);
    await connector.execute('front', 'device_add', {
      driver: 'usb-storage',
      bus: 'xhci.0',
      drive: 'stick',
      id: 'usbstick',
    });
    const blocks = await connector.queryBlock('front');
    expect(blocks).toHaveLength(1);
    expect(blocks[0]).toMatchObject({
      qdev: expect.stringContaining('usbstick'),
      inserted: { file: image, drv: 'raw' },
    });

    // USB unplug needs no guest; undo so other tests see a clean machine.
    await connector.execute('front', 'device_del', { id: 'usbstick' });
    for (let tries = 0; (await connector.queryBlock('front')).length > 0; tries++) {
      if (tries > 100) throw new Error('usbstick was not unplugged');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await connector.execute('front', 'blockdev-del', { 'node-name': 'stick' });
  });

  it('reuses one QMP connection for successive calls', async () => {
    const statuses = await Promise.all(Array.from({ length: 5 }, () => connector.queryStatus('front')));
    expect(new Set(statuses.map((s) => s.status))).toEqual(new Set(['prelaunch']));
    // A second connector cannot connect while the first holds the socket (one QMP client at a time).
    const other = new QemuConnector({ registryFile, handshakeTimeoutMs: 200 });
    cleanup.defer(() => other.dispose());
    await expect(other.isRunning('front')).rejects.toMatchObject({ code: 'DG_QMP_TIMEOUT' });
  });

  it('reports a domain whose QEMU died as not running', async () => {
    const [{ pid: victim }] = await labUp(['victim'], { registryFile, stateDir: join(dir, 'lab') });
    cleanup.pid(victim);
    await expect(connector.isRunning('victim')).resolves.toBe(true);
    process.kill(victim, 'SIGKILL');
    await waitUntil(() => !processExists(victim), 3_000);
    // Both with the connection it held, and with a fresh connector.
    await expect(connector.isRunning('victim')).resolves.toBe(false);
    await expect(new QemuConnector({ registryFile }).isRunning('victim')).resolves.toBe(false);
    await expect(connector.queryBlock('victim')).rejects.toMatchObject({
      code: 'DG_DOMAIN_NOT_RUNNING',
      message: 'domain victim is not running',
    });
    await labDown(['victim'], { registryFile });
    expect((await readRegistry(registryFile)).domains['victim']).toBeUndefined();
  });

  it('reports a registry entry whose socket does not exist as not running', async () => {
    await updateRegistry(registryFile, (d) => ({
      ...d,
      domains: { ...d.domains, stale: { qmp: join(dir, 'gone.qmp') } },
    }));
    cleanup.defer(() =>
      updateRegistry(registryFile, (d) => {
        const domains = { ...d.domains };
        delete domains['stale'];
        return { ...d, domains };
      }),
    );
    await expect(connector.isRunning('stale')).resolves.toBe(false);
  });
});

describe('a registry reader that refuses (devgated: its StrictModes check)', () => {
  // As devgated's (readTrustedRegistry, in @devgate/service): DG_CONFIG_INVALID for a file that
  // another user could write. Without it, a registry made writable later could move a VM's socket.
  const strict = (file: string) => {
    if ((statSync(file).mode & 0o022) !== 0)
      throw Errors.configInvalid({ location: file, reason: 'the file is writable by other users' });
    return readRegistrySync(file);
  };

  it('keeps the registry read before until the file is safe again; a broken one is still an error', async () => {
    const file = join(dir, 'strict.json');
    await writeRegistry(file, {
      dom0: 'dom0',
      domains: { front: (await readRegistry(registryFile)).domains['front'] },
    });
    const own = new QemuConnector({ registryFile: file, registryReader: strict });
    try {
      await expect(own.isRunning('front')).resolves.toBe(true);
      // Made writable by others, then rewritten: front's QMP socket moved, and a VM added.
      await fs.chmod(file, 0o666);
      const moved = { domains: { front: { qmp: join(dir, 'elsewhere.qmp') }, other: { qmp: join(dir, 'other.qmp') } } };
      await fs.writeFile(file, JSON.stringify(moved));
      expect(own.domains()).toEqual(['front']);
      await expect(own.isRunning('front')).resolves.toBe(true);
      // Safe again, by a chmod alone (only the file's ctime changes): what it says now is read.
      await fs.chmod(file, 0o644);
      expect(own.domains()).toEqual(['front', 'other']);
      await expect(own.isRunning('front')).resolves.toBe(false);
      // Broken is not refused: its error, as without a reader.
      await fs.writeFile(file, '{ "domains": ');
      expect(() => own.domains()).toThrow(expect.objectContaining({ code: 'DG_REGISTRY_INVALID' }));
    } finally {
      own.dispose();
    }
    // Refused before anything was read: the refusal is the answer.
    await fs.chmod(file, 0o666);
    const fresh = new QemuConnector({ registryFile: file, registryReader: strict });
    expect(() => fresh.domains()).toThrow(expect.objectContaining({ code: 'DG_CONFIG_INVALID' }));
    fresh.dispose();
  });
});

describe('qemuModule', () => {
  it('lists its contributions and registers its connector with a kernel', () => {
    expect(qemuContributions.connectors).toEqual(['qemu']);
    const kernel = new Kernel();
    const module = qemuModule({ registryFile });
    kernel.load(module);
    expect(kernel.container.resolve<Connector>(Connector)).toBe(module.connector);
    kernel.dispose();
  });
});
