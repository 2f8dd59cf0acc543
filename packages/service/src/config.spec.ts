import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  checkConfig,
  defaultConfig,
  loadConfig,
  readConfigFile,
  readTrustedRegistry,
  requireTrustedFile,
} from './config.js';
import { TempDir } from './store/testing/temp-store.js';

// Who may change state by default: nobody but root. The read group (`devgate`) reads through
// devgate.sock; only users and groups the configuration names are let into devgate.sock.rw.
it('as root, the default lets the read group read and nobody but root write', () => {
  expect(process.getuid?.()).toBe(0);
  expect(defaultConfig({}).access).toEqual({ readGroup: 'devgate', users: [], groups: [] });
});

describe('defaultConfig: the socket of a devgated not run as root', () => {
  let getuid: jest.SpyInstance;
  beforeEach(() => (getuid = jest.spyOn(process, 'getuid').mockReturnValue(1000)));
  afterEach(() => getuid.mockRestore());

  it('is in $XDG_RUNTIME_DIR when absolute, else in os.tmpdir(): never relative to the working directory', () => {
    expect(defaultConfig({ XDG_RUNTIME_DIR: '/run/user/1000' }).socket).toBe('/run/user/1000/devgate/devgate.sock');
    // The XDG spec: a relative one is ignored. An empty one is none (the client's resolveSocket agrees).
    const fallback = path.join(os.tmpdir(), 'devgate', 'devgate.sock');
    for (const runtime of [undefined, '', 'run/user/1000', './run'])
      expect(defaultConfig({ XDG_RUNTIME_DIR: runtime }).socket).toBe(fallback);
  });
});

it('a configuration that names only the read group gives it no write access', () => {
  const { config, issues } = checkConfig('{ "access": { "readGroup": "devgate" } }', 'devgated.json');
  expect(issues).toEqual([]);
  expect(config!.access).toEqual({ readGroup: 'devgate', users: [], groups: [] });
  // Without an access section at all, the same.
  expect(checkConfig('{}', 'devgated.json').config!.access).toEqual({ readGroup: 'devgate', users: [], groups: [] });
});

it('writers are exactly those configured', () => {
  const text = '{ "access": { "readGroup": "devgate", "users": ["alice"], "groups": ["devgate-admin"] } }';
  expect(checkConfig(text, 'devgated.json').config!.access).toEqual({
    readGroup: 'devgate',
    users: ['alice'],
    groups: ['devgate-admin'],
  });
});

it("inputTargets names each USB VM's input target (Qubes' input-proxy-target); bad ones are located", () => {
  const { config } = checkConfig('{ "inputTargets": { "sys-usb": "work" } }', 'devgated.json');
  expect(config!.inputTargets).toEqual({ 'sys-usb': 'work' });
  expect(checkConfig('{}', 'devgated.json').config!.inputTargets).toBeUndefined();
  const { issues } = checkConfig(
    '{\n  "inputTargets": { "sys-usb": "../work", "-x": "work", "u": 3 }\n}',
    'devgated.json',
  );
  expect(issues.map((i) => `${i.line}:${i.column} ${i.message}`)).toEqual([
    '2:32 inputTargets.sys-usb must be a domain name',
    "2:43 invalid backend name '-x'",
    '2:62 inputTargets.u must be a domain name',
  ]);
  expect(checkConfig('{ "inputTargets": ["work"] }', 'devgated.json').issues[0].message).toBe(
    'inputTargets must be an object: {"sys-usb": "work"}',
  );
});

it('refuses a key given twice: devgated read the first, jq and JSON.parse the last', () => {
  // Appended to revoke alice's write access: without the check, devgated kept the first `access`.
  const text = '{\n  "access": { "users": ["alice"] },\n  "access": { "users": [] }\n}';
  expect(checkConfig(text, 'devgated.json')).toEqual({
    issues: [{ file: 'devgated.json', line: 3, column: 3, message: "'access' is set twice" }],
  });
  expect(
    checkConfig('{ "access": { "users": ["alice"], "users": [] } }', 'devgated.json').issues.map((i) => i.message),
  ).toEqual(["'access.users' is set twice"]);
});

it('refuses misspelt keys in access and usbPolicy, which left their defaults in force silently', () => {
  const text =
    '{ "access": { "readgroup": "wheel", "user": ["bob"] }, "usbPolicy": { "rules": "/r", "implicit": "allow" } }';
  expect(checkConfig(text, 'devgated.json').issues.map((i) => i.message)).toEqual([
    "unknown setting 'access.readgroup'",
    "unknown setting 'access.user'",
    "unknown setting 'usbPolicy.implicit'",
  ]);
  expect(checkConfig('{ "access": ["alice"] }', 'devgated.json').issues.map((i) => i.message)).toEqual([
    'access must be an object: {"readGroup": GROUP, "users": [...], "groups": [...]}',
  ]);
  expect(checkConfig('{ "access": { "readGroup": "a b" } }', 'devgated.json').issues.map((i) => i.message)).toEqual([
    "access.readGroup: 'a b' is not a group name",
  ]);
});

it('audit.keepDays: how long audit entries are kept, 365 days unless set, null for ever; bad values refused', () => {
  const audit = (text: string) => checkConfig(text, 'devgated.json').config?.audit;
  const messages = (text: string) =>
    checkConfig(text, 'devgated.json').issues.map((i) => `${i.line}:${i.column} ${i.message}`);
  expect(defaultConfig({}).audit).toEqual({ keepDays: 365 });
  expect(audit('{}')).toEqual({ keepDays: 365 });
  expect(audit('{ "audit": {} }')).toEqual({ keepDays: 365 });
  expect(audit('{ "audit": { "keepDays": 30 } }')).toEqual({ keepDays: 30 });
  expect(audit('{ "audit": { "keepDays": null } }')).toEqual({ keepDays: null });
  for (const bad of ['0', '-1', '1.5', '"30"', 'true', '36501', '[]'])
    expect([bad, messages(`{\n  "audit": { "keepDays": ${bad} }\n}`)]).toEqual([
      bad,
      ['2:26 audit.keepDays must be a whole number of days from 1 to 36500, or null to keep every entry'],
    ]);
  expect(messages('{ "audit": { "keepdays": 30 } }')).toEqual(["1:14 unknown setting 'audit.keepdays'"]);
  expect(messages('{ "audit": 30 }')).toEqual(['1:12 audit must be an object: {"keepDays": 365}']);
});

describe('paths in the configuration', () => {
  // devgated's working directory is `/` under systemd: a relative path is read beside the file
  // that names it, as sshd reads an included one.
  it('are resolved beside the file that names them; absolute ones are kept', () => {
    const text = JSON.stringify({
      socket: 'run/devgate.sock',
      stateDir: 'state',
      domains: '../shared/domains.json',
      backends: {
        dom0: { sysroot: 'host' },
        'sys-usb': { recording: 'usbkbd.umockdev' },
        'sys-usb2': { agent: 'agents/control.sock', exports: { disk0: 'agents/disk0.sock' } },
      },
      usbPolicy: { rules: 'usb/rules.conf' },
      modules: ['./drivers/serial'],
    });
    expect(checkConfig(text, '/etc/devgate/devgated.json').config).toMatchObject({
      socket: '/etc/devgate/run/devgate.sock',
      stateDir: '/etc/devgate/state',
      domains: '/etc/shared/domains.json',
      backends: {
        dom0: { sysroot: '/etc/devgate/host' },
        'sys-usb': { recording: '/etc/devgate/usbkbd.umockdev' },
        'sys-usb2': { agent: '/etc/devgate/agents/control.sock', exports: { disk0: '/etc/devgate/agents/disk0.sock' } },
      },
      usbPolicy: { rules: '/etc/devgate/usb/rules.conf', implicitTarget: 'block' },
      modules: [{ specifier: './drivers/serial', from: '/etc/devgate' }],
    });
    const absolute = {
      socket: '/run/devgate/devgate.sock',
      stateDir: '/var/lib/devgate',
      domains: '/etc/devgate/domains.json',
      backends: { dom0: { sysroot: '/srv/host' }, 'sys-usb': { recording: '/srv/usbkbd.umockdev' } },
      usbPolicy: { rules: '/etc/usbguard/rules.conf', implicitTarget: 'block' },
    };
    expect(checkConfig(JSON.stringify(absolute), '/etc/devgate/devgated.json').config).toMatchObject(absolute);
  });

  it('named relatively, a configuration file is found from the working directory, and its paths beside it', () => {
    expect(checkConfig('{ "stateDir": "state" }', 'conf/devgated.json').config!.stateDir).toBe(
      path.resolve('conf', 'state'),
    );
  });
});

describe('loadConfig: a file another user could change is refused', () => {
  // It names devgated's writers and the driver code it loads as root: whoever can write the file,
  // or replace it in its directory, could make themselves root.
  let tmp: TempDir;
  let file: string;
  beforeEach(() => {
    tmp = new TempDir();
    file = path.join(tmp.dir, 'devgated.json');
    fs.writeFileSync(file, '{ "access": { "users": ["alice"] } }', { mode: 0o644 });
  });
  afterEach(() => tmp.remove());
  const reason = () => {
    try {
      loadConfig(file);
    } catch (error) {
      return `${(error as { code: string }).code}: ${(error as Error).message}`;
    }
    return 'loaded';
  };

  it('loads one only root (or its own user) can change', () => {
    expect(loadConfig(file).access.users).toEqual(['alice']);
    fs.chmodSync(tmp.dir, 0o1777);
    expect(reason()).toBe('loaded');
  });

  it('refuses group or other write, another owner, and a directory others may write', () => {
    fs.chmodSync(file, 0o664);
    expect(reason()).toBe(`DG_CONFIG_INVALID: ${file}: the file is writable by other users (mode 0664)`);
    fs.chmodSync(file, 0o644);
    fs.chownSync(file, 4242, 4242);
    expect(reason()).toBe(`DG_CONFIG_INVALID: ${file}: the file is owned by uid 4242, neither root nor uid 0`);
    fs.chownSync(file, 0, 0);
    fs.chmodSync(tmp.dir, 0o777);
    expect(reason()).toBe(`DG_CONFIG_INVALID: ${file}: its directory is writable by other users (mode 0777)`);
  });

  it('says how to make it safe, not to check what it says', () => {
    fs.chmodSync(file, 0o666);
    const refused = (() => {
      try {
        loadConfig(file);
      } catch (error) {
        return error as { hint?: string };
      }
    })();
    expect(refused?.hint).toMatch(/^make it root's and writable by root alone/);
  });
});

describe('requireTrustedFile: a file devgated reads that is not there yet', () => {
  // The domain registry may be absent (no VM yet): whoever could create it would choose the VMs.
  let tmp: TempDir;
  beforeEach(() => (tmp = new TempDir()));
  afterEach(() => tmp.remove());
  const reason = (file: string) => {
    try {
      requireTrustedFile(file);
    } catch (error) {
      return `${(error as { code: string }).code}: ${(error as Error).message}`;
    }
    return 'trusted';
  };

  it('is checked in the nearest directory that exists, sticky or not', () => {
    const file = path.join(tmp.dir, 'state', 'devgate', 'domains.json');
    expect(reason(file)).toBe('trusted');
    fs.chmodSync(tmp.dir, 0o1777);
    expect(reason(file)).toBe(
      `DG_CONFIG_INVALID: ${file}: it does not exist, and ${tmp.dir}, where it would be created, is writable by other users, who could create it (mode 1777)`,
    );
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
    expect(reason(file)).toBe('trusted');
    fs.chownSync(path.dirname(file), 4242, 4242);
    expect(reason(file)).toBe(`DG_CONFIG_INVALID: ${file}: its directory is owned by uid 4242, neither root nor uid 0`);
  });
});

/**
 * `script` run in a child node that loaded config.ts (as `config`) after `before`, its output; `read()`
 * there reads `file` through readTrustedRegistry.
 */
function registryInChild(file: string, before: string, script: string, options: { uid?: number; gid?: number } = {}) {
  return execFileSync(
    process.execPath,
    [
      '--conditions=@devgate/source',
      '-r',
      path.resolve(__dirname, 'store/testing/register-ts.cjs'),
      '-e',
      `const fs = require('node:fs'); const file = process.argv[1]; ${before}
      const config = require(${JSON.stringify(path.join(__dirname, 'config.ts'))});
      const read = () => {
        try { return JSON.stringify(config.readTrustedRegistry(file)); }
        catch (error) { return error.code + ': ' + error.message; }
      };
      ${script}`,
      file,
    ],
    { ...options, encoding: 'utf8', timeout: 8_000 },
  );
}

describe('readTrustedRegistry: the domain registry, at every read devgated makes', () => {
  let tmp: TempDir;
  let file: string;
  beforeEach(() => {
    tmp = new TempDir();
    file = path.join(tmp.dir, 'domains.json');
  });
  afterEach(() => tmp.remove());
  const read = () => {
    try {
      return readTrustedRegistry(file);
    } catch (error) {
      return `${(error as { code: string }).code}: ${(error as Error).message}`;
    }
  };

  it('reads one only root can change, and an absent one as empty when nobody else could create it', () => {
    expect(read()).toEqual({ dom0: 'dom0', domains: {} });
    fs.writeFileSync(file, JSON.stringify({ domains: { work: { qmp: '/run/work.qmp' } } }), { mode: 0o644 });
    expect(read()).toEqual({ dom0: 'dom0', domains: { work: { qmp: '/run/work.qmp' } } });
    // Broken is another matter than untrusted: its own code, as the QEMU connector gives it.
    fs.writeFileSync(file, '{ "domains": ');
    expect(read()).toMatch(/^DG_REGISTRY_INVALID: /);
  });

  it('refuses one another user could write, or create', () => {
    fs.writeFileSync(file, JSON.stringify({ domains: {} }), { mode: 0o644 });
    fs.chmodSync(file, 0o666);
    expect(read()).toBe(`DG_CONFIG_INVALID: ${file}: the file is writable by other users (mode 0666)`);
    fs.rmSync(file);
    fs.chmodSync(tmp.dir, 0o777);
    expect(read()).toBe(
      `DG_CONFIG_INVALID: ${file}: it does not exist, and its directory is writable by other users, who could create it (mode 0777)`,
    );
  });

  it("as a user other than root (the CLI without devgated), reads the user's own registry, or root's", () => {
    const NOBODY = 65534;
    const home = path.join(tmp.dir, 'home');
    const own = path.join(home, 'domains.json');
    fs.chmodSync(tmp.dir, 0o755);
    fs.mkdirSync(home, { mode: 0o700 });
    fs.chownSync(home, NOBODY, NOBODY);
    const asNobody = () => registryInChild(own, '', 'process.stdout.write(read());', { uid: NOBODY, gid: NOBODY });
    // Not there yet, in a directory of its own: empty.
    expect(asNobody()).toBe(JSON.stringify({ dom0: 'dom0', domains: {} }));
    fs.writeFileSync(own, JSON.stringify({ domains: { work: { qmp: '/run/work.qmp' } } }), { mode: 0o644 });
    const work = JSON.stringify({ dom0: 'dom0', domains: { work: { qmp: '/run/work.qmp' } } });
    expect(asNobody()).toBe(work); // root's
    fs.chownSync(own, NOBODY, NOBODY);
    expect(asNobody()).toBe(work);
    fs.chownSync(own, 4242, 4242);
    expect(asNobody()).toBe(`DG_CONFIG_INVALID: ${own}: the file is owned by uid 4242, neither root nor uid ${NOBODY}`);
  }, 20_000);

  // A registry that is not a readable regular file.
  const inChild = (before: string, script: string, options: { uid?: number; gid?: number } = {}) =>
    registryInChild(file, before, script, options);

  it('is absent, not refused, when it was not there at the open and is renamed into place just after', () => {
    // `devgate lab up` writes the registry beside it and renames it into place; devgated's watch may
    // open it just before. It is read next time: the watch sees the file changed. The child's open
    // renames it into place after failing (config.ts's fs is a copy made when it loads, so patched first).
    const out = inChild(
      `const open = fs.openSync;
      fs.openSync = (...args) => {
        fs.openSync = open;
        try { return open(...args); } finally {
          fs.writeFileSync(file + '.tmp', JSON.stringify({ domains: { work: { qmp: '/run/work.qmp' } } }));
          fs.renameSync(file + '.tmp', file);
        }
      };`,
      `process.stdout.write(read() + '\\n' + read());`,
    );
    expect(out.split('\n')).toEqual([
      JSON.stringify({ dom0: 'dom0', domains: {} }),
      JSON.stringify({ dom0: 'dom0', domains: { work: { qmp: '/run/work.qmp' } } }),
    ]);
  }, 10_000);

  it('a directory is refused as not a regular file, not as writable by others, whoever owns it', () => {
    fs.mkdirSync(file);
    fs.chmodSync(file, 0o777);
    expect(read()).toBe(`DG_CONFIG_INVALID: ${file}: not a regular file`);
    fs.chownSync(file, 4242, 4242);
    expect(read()).toBe(`DG_CONFIG_INVALID: ${file}: not a regular file`);
  });

  it('one devgated may not read says so (a non-root devgated, root on NFS with root_squash)', () => {
    fs.writeFileSync(file, JSON.stringify({ domains: {} }), { mode: 0o600 });
    fs.chmodSync(tmp.dir, 0o755);
    expect(inChild('', 'process.stdout.write(read());', { uid: 65534, gid: 65534 })).toBe(
      `DG_CONFIG_INVALID: ${file}: cannot read it: permission denied (EACCES)`,
    );
  }, 10_000);
});

describe('a FIFO where a file devgated trusts should be', () => {
  // Opening one waits for a writer: devgated hung at start, before it said a word. Read in a child
  // node, so that a read that blocks fails this test by its timeout instead of hanging jest.
  const REGISTER_TS = path.resolve(__dirname, 'store/testing/register-ts.cjs');
  const children = new Set<ChildProcess>();
  let tmp: TempDir;
  let fifo: string;
  beforeEach(() => {
    tmp = new TempDir();
    fifo = path.join(tmp.dir, 'fifo.json');
    execFileSync('mkfifo', ['-m', '0644', fifo]);
  });
  afterEach(() => {
    for (const child of children) child.kill('SIGKILL');
    children.clear();
    tmp.remove();
  });

  /** What `read(file)` of config.ts says in a child: 'read', or the code and message it throws. */
  const readInChild = (read: 'loadConfig' | 'readTrustedRegistry' | 'readConfigFile', file: string) =>
    new Promise<string>((resolve, reject) => {
      const script = `
        const config = require(${JSON.stringify(path.join(__dirname, 'config.ts'))});
        try { config[process.argv[1]](process.argv[2]); process.stdout.write('read'); }
        catch (error) { process.stdout.write(error.code + ': ' + error.message); }`;
      const child = spawn(
        process.execPath,
        ['--conditions=@devgate/source', '-r', REGISTER_TS, '-e', script, read, file],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      children.add(child);
      let out = '';
      child.stdout!.setEncoding('utf8').on('data', (text: string) => (out += text));
      child.once('error', reject);
      child.once('close', () => resolve(out));
    });

  it('is refused as not a regular file, at once: the configuration, and the domain registry', async () => {
    const refusal = `DG_CONFIG_INVALID: ${fifo}: not a regular file`;
    expect(await readInChild('loadConfig', fifo)).toBe(refusal);
    expect(await readInChild('readTrustedRegistry', fifo)).toBe(refusal);
    // And where only its kind is checked (the registry at start: devgated opens it later).
    expect(() => requireTrustedFile(fifo)).toThrow(`${fifo}: not a regular file`);
  }, 8_000);

  it('is refused as not a regular file, at once, where a configuration is only checked (config check)', async () => {
    expect(await readInChild('readConfigFile', fifo)).toBe(`DG_CONFIG_INVALID: ${fifo}: not a regular file`);
  }, 8_000);
});

describe('readConfigFile: a configuration `devgate config check` reads', () => {
  let tmp: TempDir;
  beforeEach(() => (tmp = new TempDir()));
  afterEach(() => tmp.remove());

  it('is any regular file, whoever may write it: it is checked before it is installed', () => {
    const file = tmp.file('devgated.json');
    fs.writeFileSync(file, '{}');
    fs.chmodSync(file, 0o666);
    fs.chownSync(file, 4242, 4242);
    expect(readConfigFile(file)).toBe('{}');
    expect(() => readConfigFile(tmp.dir)).toThrow(`${tmp.dir}: not a regular file`);
    expect(() => readConfigFile(tmp.file('none.json'))).toThrow(
      `${tmp.file('none.json')}: cannot read it: no such file or directory (ENOENT)`,
    );
  });
});
