import { type DomainLifecycleEvent } from '@devgate/core';
import { Subject } from 'rxjs';
import { aliasFor } from './libvirt-attach';
import { LibvirtConnector } from './libvirt-connector';
import { type LibvirtEvent, type LibvirtTransport, type VirshResult, parseEventLine } from './virsh-transport';

// What other people's domains can do to devgate's view of libvirt: a description, a name, an
// undefine. A scripted libvirt answers the connector's virsh calls; no libvirtd is started.

const stick = { devclass: 'block', backend: 'dom0', portId: 'sdb' };
const stickDisk =
  `<disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='sda' bus='usb'/>` +
  `<alias name='${aliasFor(stick)}'/></disk>`;

interface ScriptedDomain {
  state: string;
  description?: string;
  devices?: string;
}

class ScriptedLibvirt implements LibvirtTransport {
  readonly uri = 'qemu:///scripted';
  readonly events$ = new Subject<LibvirtEvent>();

  constructor(readonly domains: Map<string, ScriptedDomain>) {}

  call(commands: readonly (readonly string[])[]): Promise<VirshResult> {
    let stdout = '';
    let stderr = '';
    for (const [cmd, ...args] of commands) {
      const domain = this.domains.get(args[0]);
      if (cmd === 'list') stdout += [...this.domains.keys()].map((n) => `${n}\n`).join('') + '\n';
      // virsh -q prints an echo without a newline.
      else if (cmd === 'echo') stdout += args.join(' ');
      else if (!domain) stderr += `error: failed to get domain '${args[0]}'\n`;
      else if (cmd === 'domstate') stdout += `${domain.state}\n`;
      else if (cmd === 'dumpxml') {
        // libvirt writes a description as it was given, escaping only XML's own characters.
        const description = (domain.description ?? '').replace(/&/g, '&amp;').replace(/</g, '&lt;');
        stdout +=
          `<domain type='qemu' id='1'><name>${args[0]}</name><description>${description}</description>` +
          `<devices>${domain.devices ?? ''}</devices></domain>\n`;
      }
    }
    return Promise.resolve({ stdout, stderr, code: 0 });
  }

  dispose(): void {
    this.events$.complete();
  }
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 150));

let libvirt: ScriptedLibvirt;
let connector: LibvirtConnector;
const signals: DomainLifecycleEvent[] = [];

async function start(domains: Record<string, ScriptedDomain>): Promise<void> {
  libvirt = new ScriptedLibvirt(new Map(Object.entries(domains)));
  connector = new LibvirtConnector({ uri: libvirt.uri, transport: libvirt, local: false, pidDir: '' });
  signals.length = 0;
  connector.lifecycle$.subscribe((e) => signals.push(e));
  await connector.ready();
}
afterEach(() => connector.dispose());

it("a domain's description cannot pass for another domain's state in a full read", async () => {
  // What the description of `aaa` says is shaped like the read of the next domain, shut off.
  const forged = ['', 'DG-MARK-7f3a-D', 'DG-MARK-7f3a', 'shut off', 'DG-MARK-7f3a', ''].join('\n');
  await start({
    aaa: { state: 'shut off', description: forged },
    work: { state: 'running', devices: stickDisk },
  });
  expect(await connector.isRunning('work')).toBe(true);
  // Every listing reads every domain again.
  const attached = await connector.attachments();
  expect(signals).toEqual([]);
  expect(await connector.isRunning('work')).toBe(true);
  expect(attached).toEqual([expect.objectContaining({ port: stick, frontend: 'work' })]);
});

it('a running domain that is undefined runs on (transient) with its devices: nothing ends', async () => {
  await start({ work: { state: 'running', devices: stickDisk } });
  expect(await connector.attachments()).toHaveLength(1);
  // `virsh undefine work` while it runs: libvirt says Undefined, and the domain keeps running.
  libvirt.events$.next({ kind: 'lifecycle', domain: 'work', detail: 'Undefined Removed' });
  await settle();
  expect(signals).toEqual([]);
  expect(connector.manages('work')).toBe(true);
  expect(await connector.isRunning('work')).toBe(true);

  // When the transient domain stops, it is gone.
  libvirt.domains.delete('work');
  libvirt.events$.next({ kind: 'lifecycle', domain: 'work', detail: 'Stopped Destroyed' });
  await settle();
  expect(signals).toEqual([{ type: 'stopped', domain: 'work' }]);
  expect(connector.manages('work')).toBe(false);
});

it('a domain that stops during a detach ends the wait at once: the device went with the machine', async () => {
  await start({ work: { state: 'running', devices: stickDisk } });
  libvirt.events$.next({ kind: 'connected' });
  await settle();
  // The guest never lets go (no device-removed); the domain is destroyed a moment later.
  setTimeout(() => {
    libvirt.domains.set('work', { state: 'shut off' });
    libvirt.events$.next({ kind: 'lifecycle', domain: 'work', detail: 'Stopped Destroyed' });
  }, 100);
  const started = Date.now();
  await connector.detach('work', stick);
  // Not libvirt's 5 s wait for device-removed.
  expect(Date.now() - started).toBeLessThan(1_000);
  expect(signals).toEqual([{ type: 'stopped', domain: 'work' }]);
  expect(await connector.attachments()).toEqual([]);
});

it('an inactive domain that is undefined is gone at once', async () => {
  await start({ work: { state: 'shut off' } });
  libvirt.domains.delete('work');
  libvirt.events$.next({ kind: 'lifecycle', domain: 'work', detail: 'Undefined Removed' });
  expect(signals).toEqual([{ type: 'undefined', domain: 'work' }]);
  expect(connector.manages('work')).toBe(false);
});

describe("virsh event lines of a domain whose name holds `': `", () => {
  // A domain may be called `work': Stopped Destroyed #`: its own events must not read as `work`'s.
  const name = "work': Stopped Destroyed #";

  it('are not taken for another domain', () => {
    const line = `2026-12-01 10:00:00.000+0000: event 'lifecycle' for domain '${name}': Started Booted`;
    expect(parseEventLine(line)).toEqual({ kind: 'lifecycle', domain: name, detail: 'Started Booted' });
    const removed = `event 'device-removed' for domain '${name}': ua-dg-x`;
    expect(parseEventLine(removed)).toEqual({ kind: 'device-removed', domain: name, alias: 'ua-dg-x' });
  });

  it("leave a plain domain's lines as they were", () => {
    expect(parseEventLine("event 'lifecycle' for domain 'work': Stopped Destroyed")).toEqual({
      kind: 'lifecycle',
      domain: 'work',
      detail: 'Stopped Destroyed',
    });
    expect(parseEventLine("event 'device-added' for domain 'work': ua-dg-x")).toEqual({
      kind: 'device-added',
      domain: 'work',
      alias: 'ua-dg-x',
    });
  });
});
