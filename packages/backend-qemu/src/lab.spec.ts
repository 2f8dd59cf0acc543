import { existsSync, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { readRegistry, writeRegistry } from './domain-registry.js';
import { isQemuAlive, labDown, labList, labQemuArgs, labUp, type LabOptions } from './lab.js';
import { QmpClient } from './qmp-client.js';
import { Cleanup } from './testing/fixtures.js';

jest.setTimeout(30_000);

const cleanup = new Cleanup();
let options: LabOptions & { registryFile: string; stateDir: string };

beforeEach(async () => {
  const dir = await cleanup.tempDir();
  options = { registryFile: join(dir, 'domains.json'), stateDir: join(dir, 'lab') };
  // Whatever a test leaves registered is killed by pid, even if the test failed half-way.
  cleanup.defer(async () => {
    const registry = await readRegistry(options.registryFile).catch(() => undefined);
    for (const entry of Object.values(registry?.domains ?? {})) if (entry.lab && entry.pid) cleanup.pid(entry.pid);
  });
});
afterEach(() => cleanup.run());

describe('lab', () => {
  it('brings domains up, lists them and takes them down', async () => {
    const up = await labUp(['lab-a', 'lab-b'], options);
    expect(up.map((d) => d.name)).toEqual(['lab-a', 'lab-b']);

    const registry = await readRegistry(options.registryFile);
    expect(registry.domains['lab-a']).toEqual({ qmp: join(options.stateDir, 'lab-a.qmp'), pid: up[0].pid, lab: true });

    const listed = await labList(options);
    expect(listed).toEqual([
      { name: 'lab-a', pid: up[0].pid, socket: join(options.stateDir, 'lab-a.qmp'), running: true },
      { name: 'lab-b', pid: up[1].pid, socket: join(options.stateDir, 'lab-b.qmp'), running: true },
    ]);
    expect(await fs.readFile(join(options.stateDir, 'lab-a.pid'), 'utf8')).toBe(`${up[0].pid}\n`);

    // The machine is what the lab promises: paused q35 with xHCI and two PCIe root ports.
    const client = await QmpClient.connect(up[0].socket);
    cleanup.defer(() => client.destroy());
    await expect(client.execute('query-status')).resolves.toMatchObject({ status: 'prelaunch' });
    const peripherals = await client.execute<{ name: string }[]>('qom-list', { path: '/machine/peripheral' });
    expect(peripherals.map((p) => p.name).sort()).toEqual(['rp1', 'rp2', 'type', 'xhci']);
    await client.close();

    await expect(labDown(['lab-a'], options)).resolves.toEqual(['lab-a']);
    expect(isQemuAlive(up[0].pid, up[0].socket)).toBe(false);
    expect(isQemuAlive(up[1].pid, up[1].socket)).toBe(true);
    expect((await labList(options)).map((d) => d.name)).toEqual(['lab-b']);

    await expect(labDown(undefined, options)).resolves.toEqual(['lab-b']);
    expect(isQemuAlive(up[1].pid, up[1].socket)).toBe(false);
    expect(await labList(options)).toEqual([]);
    expect(await fs.readdir(options.stateDir)).toEqual([]);
  });

  it('refuses duplicate names, in the registry and in one call', async () => {
    await labUp(['dup'], options);
    await expect(labUp(['dup'], options)).rejects.toMatchObject({
      code: 'DG_DOMAIN_EXISTS',
      message: `domain 'dup' already exists in ${options.registryFile}`,
    });
    await expect(labUp(['twice', 'twice'], options)).rejects.toMatchObject({ code: 'DG_DOMAIN_EXISTS' });
    await expect(labUp(['dom0'], options)).rejects.toMatchObject({ code: 'DG_DOMAIN_EXISTS' });
    // Nothing was started for the refused calls.
    expect((await labList(options)).map((d) => d.name)).toEqual(['dup']);
    await labDown(undefined, options);
  });

  it('refuses invalid names before starting anything', async () => {
    await expect(labUp(['ok', '9lives'], options)).rejects.toMatchObject({ code: 'DG_INVALID_DOMAIN_NAME' });
    expect(existsSync(options.stateDir)).toBe(false);
  });

  it('reports a QEMU that fails to start, and starts none of the batch', async () => {
    const error = await labUp(['x'], { ...options, qemuBinary: '/bin/false' }).catch((e: unknown) => e);
    expect(error).toMatchObject({
      code: 'DG_LAB_START_FAILED',
      message: expect.stringContaining('QEMU exited (code 1)'),
    });
    const missing = await labUp(['y'], { ...options, qemuBinary: '/nonexistent/qemu' }).catch((e: unknown) => e);
    expect(missing).toMatchObject({ code: 'DG_LAB_START_FAILED', message: expect.stringContaining('not found') });
    expect(await labList(options)).toEqual([]);
    expect(await fs.readdir(options.stateDir)).toEqual([]);
  });

  it('refuses a state directory whose socket path would not fit in sun_path', async () => {
    const error = await labUp(['vm'], { ...options, stateDir: join(options.stateDir, 'x'.repeat(120)) }).catch(
      (e: unknown) => e,
    );
    expect(error).toMatchObject({
      code: 'DG_LAB_START_FAILED',
      message: expect.stringContaining('longer than 107 bytes'),
    });
  });

  it('SIGKILLs a QEMU that does not answer quit within the bound', async () => {
    const [vm] = await labUp(['hung'], options);
    process.kill(vm.pid, 'SIGSTOP'); // it can no longer answer QMP
    const started = Date.now();
    await labDown(['hung'], { ...options, stopTimeoutMs: 300 });
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(isQemuAlive(vm.pid, vm.socket)).toBe(false);
    expect(await labList(options)).toEqual([]);
  });

  it('lists a killed lab domain as not running, and labDown still cleans it up', async () => {
    const [vm] = await labUp(['dead'], options);
    process.kill(vm.pid, 'SIGKILL');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await labList(options)).toEqual([{ name: 'dead', pid: vm.pid, socket: vm.socket, running: false }]);
    await labDown(['dead'], options);
    expect(existsSync(vm.socket)).toBe(false);
    expect(await labList(options)).toEqual([]);
  });

  it('refuses to stop a domain it did not start, or one it does not know', async () => {
    await writeRegistry(options.registryFile, { dom0: 'dom0', domains: { real: { qmp: '/run/real.qmp' } } });
    await expect(labDown(['real'], options)).rejects.toMatchObject({ code: 'DG_NOT_LAB_DOMAIN' });
    await expect(labDown(['ghost'], options)).rejects.toMatchObject({ code: 'DG_NO_SUCH_DOMAIN' });
    // Without names only lab domains are considered.
    await expect(labDown(undefined, options)).resolves.toEqual([]);
  });

  it('escapes commas in the socket path for QEMU option syntax', () => {
    const args = labQemuArgs('vm', '/tmp/a,b/vm.qmp', '/tmp/a,b/vm.pid');
    expect(args[args.indexOf('-qmp') + 1]).toBe('unix:/tmp/a,,b/vm.qmp,server=on,wait=off');
  });
});
