import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { firstValueFrom, filter, timeout } from 'rxjs';
import { Kernel } from '@devgate/core';
import { blockModule } from '@devgate/driver-block';
import { LocalHostSource, rootsUnder } from '@devgate/host';
import {
  type LoopDisk,
  addDevice,
  createLoopDisk,
  loopStickRecord,
  disposeAllLoopDisks,
  materializeHost,
  removeDevice,
} from '@devgate/testkit';
import { labDown, labUp } from './lab.js';
import { qemuModule } from './qemu-module.js';

// A pulled stick cannot be made with a loop device here: the kernel keeps a loop device QEMU holds
// open alive even after `losetup -d`. So the backend is a host tree on disk that reports the
// removal, while the attachment lives in real QEMU, on a real loop device of the same name.
jest.setTimeout(30_000);

let dir: string;
let registryFile: string;
let disk: LoopDisk;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-pull-'));
  registryFile = path.join(dir, 'domains.json');
  await labUp(['work'], { registryFile, stateDir: path.join(dir, 'lab') });
  disk = createLoopDisk({ sizeMiB: 8 });
});

afterAll(async () => {
  await labDown(undefined, { registryFile }).catch(() => undefined);
  disposeAllLoopDisks();
  fs.rmSync(dir, { recursive: true, force: true });
});

const stick = (name: string) => loopStickRecord(name, { ID_MODEL: 'Cruzer' });

it('detaches a device pulled while attached, from QEMU, within 1 s, with events', async () => {
  const sysroot = path.join(dir, 'host');
  materializeHost([], sysroot);
  addDevice(sysroot, stick(disk.name));

  const qemu = qemuModule({ registryFile });
  const kernel = new Kernel().load(blockModule, qemu);
  const source = new LocalHostSource({ roots: rootsUnder(sysroot), hotplug: 'fs.watch' });
  kernel.registerSource(source);
  const manager = kernel.start();
  try {
    const port = { devclass: 'block', backend: 'dom0', portId: disk.name };
    await manager.attach({ frontend: 'work', port });
    const nodes = async () =>
      (await qemu.connector.queryBlock('work')).filter((b) => b.inserted?.['node-name']?.startsWith('dg-'));
    expect(await nodes()).toHaveLength(1);

    const detached = firstValueFrom(
      manager.events$.pipe(
        filter((e) => e.type === 'detached' && e.device.port.portId === disk.name),
        timeout(1_000),
      ),
    );
    const pulledAt = Date.now();
    removeDevice(sysroot, stick(disk.name).devpath);
    const event = await detached;
    expect(event.type === 'detached' && event.frontend).toBe('work');
    while ((await nodes()).length > 0 && Date.now() - pulledAt < 1_000) await new Promise((r) => setTimeout(r, 10));
    expect(await nodes()).toEqual([]);
    expect(Date.now() - pulledAt).toBeLessThan(1_000);
    expect(await qemu.connector.attachments()).toEqual([]);
    expect(manager.get(port)).toBeUndefined();

    // Re-inserted, it is attachable again at once: no manual recovery, no stale frontend name.
    addDevice(sysroot, stick(disk.name));
    for (let i = 0; i < 100 && !manager.get(port); i++) await new Promise((r) => setTimeout(r, 10));
    const again = await manager.attach({ frontend: 'work', port });
    expect(again.attachment?.options['frontend-dev']).toBe('xvdi');
    await manager.detach('work', port);
  } finally {
    kernel.dispose();
  }
});
