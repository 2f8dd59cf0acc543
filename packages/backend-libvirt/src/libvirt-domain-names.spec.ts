import { type DomainLifecycleEvent, type Logger } from '@devgate/core';
import { Subject } from 'rxjs';
import { LibvirtConnector } from './libvirt-connector';
import { type LibvirtEvent, type LibvirtTransport, type VirshResult } from './virsh-transport';

// libvirt's domain names are anyone's who may define a domain: they are frontend names in every
// listing, so a name devgate would not give a domain is skipped (not cleaned up into another name).
// A scripted libvirt answers the connector's virsh calls; no libvirtd is started.

const BIDI = 'evil\u202ecod.exe';
const TITLE = 'x\u001b]0;PWNED\u0007';
/** Would be `work` if trimmed: another domain, which must not pass for it. */
const SPACED = 'work ';

class ScriptedLibvirt implements LibvirtTransport {
  readonly uri = 'qemu:///scripted';
  readonly events$ = new Subject<LibvirtEvent>();
  readonly calls: string[][] = [];

  constructor(readonly names: readonly string[]) {}

  call(commands: readonly (readonly string[])[]): Promise<VirshResult> {
    let stdout = '';
    for (const argv of commands) {
      this.calls.push([...argv]);
      const [cmd, ...args] = argv;
      if (cmd === 'list') stdout += this.names.map((n) => `${n}\n`).join('') + '\n';
      else if (cmd === 'echo') stdout += `${args.join(' ')}\n`;
      else if (cmd === 'domstate') stdout += 'running\n';
      else if (cmd === 'dumpxml') stdout += `<domain type='qemu' id='1'><name>${args[0]}</name><devices/></domain>\n`;
    }
    return Promise.resolve({ stdout, stderr: '', code: 0 });
  }

  /** Domains the connector asked libvirt about, one by one. */
  asked(): string[] {
    return this.calls.filter((c) => c[0] === 'domstate' || c[0] === 'dumpxml').map((c) => c[1]);
  }

  dispose(): void {
    this.events$.complete();
  }
}

function recordingLogger(): Logger & { warnings: Record<string, unknown>[] } {
  const warnings: Record<string, unknown>[] = [];
  const none = () => {};
  return {
    warnings,
    debug: none,
    info: none,
    error: none,
    warn: (message, fields) => warnings.push({ message, ...fields }),
  };
}

let libvirt: ScriptedLibvirt;
let logger: ReturnType<typeof recordingLogger>;
let connector: LibvirtConnector;
const signals: DomainLifecycleEvent[] = [];

beforeEach(async () => {
  libvirt = new ScriptedLibvirt(['work', BIDI, TITLE, SPACED, 'a'.repeat(32)]);
  logger = recordingLogger();
  signals.length = 0;
  connector = new LibvirtConnector({ uri: libvirt.uri, transport: libvirt, local: false, pidDir: '', logger });
  connector.lifecycle$.subscribe((e) => signals.push(e));
  await connector.ready();
});
afterEach(() => connector.dispose());

it('lists only domains with devgate domain names, and never reads the others', () => {
  expect(connector.domains()).toEqual(['work']);
  expect(connector.manages(BIDI)).toBe(false);
  expect(connector.manages(SPACED)).toBe(false);
  expect(libvirt.asked()).toEqual(['work', 'work']);
});

it('says each skipped name once, escaped', async () => {
  expect(logger.warnings.map((w) => w.name)).toEqual([
    'evil\\u{202e}cod.exe',
    'x\\u{1b}]0;PWNED\\u{7}',
    'work ',
    'a'.repeat(32),
  ]);
  expect(logger.warnings[0]).toMatchObject({ message: expect.stringContaining('skipped'), uri: libvirt.uri });
  // A reconnection reads every domain again: nothing new to say.
  libvirt.events$.next({ kind: 'connected' });
  await new Promise((resolve) => setTimeout(resolve, 20));
  expect(libvirt.calls.filter((c) => c[0] === 'list')).toHaveLength(2);
  expect(logger.warnings).toHaveLength(4);
  expect(connector.domains()).toEqual(['work']);
});

it('ignores libvirt’s events about such a domain: it does not become a frontend by starting', async () => {
  libvirt.events$.next({ kind: 'lifecycle', domain: BIDI, detail: 'Started Booted' });
  libvirt.events$.next({ kind: 'device-added', domain: TITLE, alias: 'ua-x' });
  await new Promise((resolve) => setTimeout(resolve, 100));
  expect(connector.domains()).toEqual(['work']);
  expect(signals).toEqual([]);
  expect(libvirt.asked()).toEqual(['work', 'work']);
  // The same event for a frontend is heard.
  libvirt.events$.next({ kind: 'lifecycle', domain: 'work', detail: 'Started Booted' });
  expect(signals).toEqual([{ type: 'started', domain: 'work' }]);
});

it('refuses such a name asked for directly, without asking libvirt', async () => {
  await expect(connector.isRunning(BIDI)).rejects.toMatchObject({ code: 'DG_NO_CONNECTOR' });
  expect(await connector.domainXml(TITLE)).toBeUndefined();
  expect(connector.domains()).toEqual(['work']);
  expect(libvirt.asked()).toEqual(['work', 'work']);
});
