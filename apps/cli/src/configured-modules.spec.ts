import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { DaemonEvents, DeviceService, denyListHook, openStateStore } from '@devgate/service';
import { inProcessConfig } from './configured-modules';
import { withHost } from './host';

// Without devgated, the CLI works on the state and registry devgated's configuration names.
let dir: string;
let configFile: string;
let stateDir: string;
let domains: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-configured-'));
  stateDir = path.join(dir, 'configured-state');
  domains = path.join(dir, 'configured-domains.json');
  configFile = path.join(dir, 'devgated.json');
  fs.writeFileSync(configFile, JSON.stringify({ stateDir, domains }));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A tree laid out like `/` holding one disk, as `--sysroot` reads it: this host's backend, with a data path. */
function sysrootWithDisk(): string {
  const root = path.join(dir, 'root');
  const disk = path.join(root, 'sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sdx');
  fs.mkdirSync(disk, { recursive: true });
  fs.writeFileSync(path.join(disk, 'uevent'), 'MAJOR=8\nMINOR=0\nDEVNAME=sdx\nDEVTYPE=disk\n');
  fs.writeFileSync(path.join(disk, 'size'), '2048\n');
  fs.writeFileSync(path.join(disk, 'removable'), '1\n');
  fs.mkdirSync(path.join(root, 'sys/class/block'), { recursive: true });
  fs.symlinkSync(path.relative(path.join(root, 'sys/class/block'), disk), path.join(root, 'sys/class/block/sdx'));
  return root;
}

describe('inProcessConfig', () => {
  it("takes the configuration's stateDir and domains", async () => {
    expect(await inProcessConfig({ DEVGATE_CONFIG: configFile })).toEqual({ modules: [], stateDir, domains });
  });

  it('lets the environment win over the configuration', async () => {
    const env = {
      DEVGATE_CONFIG: configFile,
      DEVGATE_STATE_DIR: '/elsewhere/state',
      DEVGATE_DOMAINS: '/elsewhere/d.json',
    };
    expect(await inProcessConfig(env)).toMatchObject({ stateDir: '/elsewhere/state', domains: '/elsewhere/d.json' });
  });

  it('without a configuration, gives the defaults: no registry named', async () => {
    const config = await inProcessConfig({ DEVGATE_CONFIG: '', DEVGATE_STATE_DIR: stateDir });
    expect(config.stateDir).toBe(stateDir);
    if (!fs.existsSync('/etc/devgate/devgated.json')) expect(config.domains).toBeUndefined();
  });
});

it('refuses an in-process attach by the deny list in the configured stateDir, to a domain of the configured registry', async () => {
  // No VM: the deny list is checked before anything is asked of one, past a `query-status`.
  const qmp = path.join(dir, 'work.qmp');
  const asked: string[] = [];
  const server = net.createServer((connection) => {
    connection.on('error', () => undefined);
    connection.write(
      JSON.stringify({ QMP: { version: { qemu: { major: 8, minor: 2, micro: 0 } }, capabilities: [] } }) + '\r\n',
    );
    let buffer = '';
    connection.setEncoding('utf8').on('data', (chunk: string) => {
      buffer += chunk;
      for (let at; (at = buffer.indexOf('\n')) >= 0; buffer = buffer.slice(at + 1)) {
        const { execute, id } = JSON.parse(buffer.slice(0, at)) as { execute: string; id?: unknown };
        asked.push(execute);
        const answer =
          execute === 'query-status' ? { status: 'running', running: true } : execute === 'qmp_capabilities' ? {} : [];
        connection.write(JSON.stringify({ return: answer, id }) + '\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(qmp, resolve));
  const connections = new Set<net.Socket>();
  server.on('connection', (c) => connections.add(c));
  fs.writeFileSync(domains, JSON.stringify({ domains: { work: { qmp } } }));
  const seed = openStateStore(stateDir);
  try {
    seed.denyLists.add('work', ['b******']);
  } finally {
    seed.dispose();
  }
  const config = await inProcessConfig({ DEVGATE_CONFIG: configFile });
  const store = openStateStore(config.stateDir);
  try {
    const refused = withHost(
      {
        sysroot: sysrootWithDisk(),
        domains: config.domains,
        policyHooks: [denyListHook(() => store)],
      },
      async (host) => {
        expect(host.manager.domains()).toContain('work');
        const device = host.manager.list({ devclass: 'block' })[0];
        const service = new DeviceService(host.manager, store, new DaemonEvents());
        await service.attach({ devclass: 'block', frontend: 'work', device: `dom0:${device.port.portId}` }, 'spec');
      },
    );
    await expect(refused).rejects.toMatchObject({ code: 'DG_POLICY_DENIED' });
    // Only read: nothing was added to the VM.
    expect(asked.filter((command) => !/^(qmp_capabilities|query-[a-z-]+|qom-list|qom-get)$/.test(command))).toEqual([]);
  } finally {
    store.dispose();
    for (const connection of connections) connection.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
});
