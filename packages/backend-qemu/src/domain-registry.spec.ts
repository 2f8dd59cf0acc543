import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { join, resolve } from 'node:path';
import { DevgateError, isValidDomainName } from '@devgate/core';
import {
  defaultRegistryFile,
  findJsonErrorOffset,
  getDomain,
  parseRegistry,
  readRegistry,
  updateRegistry,
  writeRegistry,
} from './domain-registry.js';
import { Cleanup } from './testing/fixtures.js';

const cleanup = new Cleanup();
afterEach(() => cleanup.run());

const FILE = '/etc/devgate/domains.json';

/** The DevgateError that parsing `text` throws. */
function parseError(text: string): DevgateError {
  try {
    parseRegistry(text, FILE);
  } catch (error) {
    if (error instanceof DevgateError) return error;
    throw error;
  }
  throw new Error('expected parseRegistry to throw');
}

describe('parseRegistry', () => {
  it('accepts a valid registry and fills in defaults', () => {
    const text = JSON.stringify({
      domains: { work: { qmp: '/run/work.qmp' }, 'sys-usb': { qmp: '/run/usb.qmp', pid: 42, lab: true } },
    });
    expect(parseRegistry(text, FILE)).toEqual({
      dom0: 'dom0',
      domains: { work: { qmp: '/run/work.qmp' }, 'sys-usb': { qmp: '/run/usb.qmp', pid: 42, lab: true } },
    });
  });

  it.each([
    ['{"domains": {"a": }}', 'line 1, column 19'],
    ['{\n  "domains": {\n    "a": {"qmp": "/x",}\n  }\n}', 'line 3, column 23'],
    ['{"domains": {}', 'line 1, column 15'],
    ['', 'line 1, column 1'],
    ['{"domains": {}} x', 'line 1, column 17'],
    ['{"domains": {"a": {"qmp": "\\q"}}}', 'line 1, column 29'],
  ])('reports bad JSON %j with its position (%s)', (text, position) => {
    const error = parseError(text);
    expect(error.code).toBe('DG_REGISTRY_INVALID');
    expect(error.message).toContain(`domain registry ${FILE}: $: not valid JSON (${position}:`);
  });

  it.each([
    ['1bad', '$.domains["1bad"]'],
    ['has space', '$.domains["has space"]'],
    ['a'.repeat(32), `$.domains.${'a'.repeat(32)}`],
    ['', '$.domains[""]'],
    ['dom0', '$.domains.dom0'],
  ])('rejects the domain name %j at %s', (name, path) => {
    const error = parseError(JSON.stringify({ domains: { [name]: { qmp: '/x' } } }));
    expect(error).toMatchObject({ code: 'DG_REGISTRY_INVALID' });
    expect(error.message).toContain(`${FILE}: ${path}: `);
  });

  it.each([
    [{}, '$.domains: missing'],
    [{ domains: [] }, '$.domains: expected an object, got an array'],
    [{ domains: { a: {} } }, '$.domains.a.qmp: missing'],
    [{ domains: { a: 'sock' } }, '$.domains.a: expected an object, got string "sock"'],
    [{ domains: { a: { qmp: 'relative.sock' } } }, '$.domains.a.qmp: expected an absolute path'],
    [{ domains: { a: { qmp: '/x', pid: -1 } } }, '$.domains.a.pid: expected a positive integer, got -1'],
    [{ domains: { a: { qmp: '/x', pid: '12' } } }, '$.domains.a.pid: expected a positive integer, got "12"'],
    [{ domains: { a: { qmp: '/x', lab: 'yes' } } }, '$.domains.a.lab: expected true or false'],
    [{ domains: { a: { qmp: '/x', qpm: '/y' } } }, '$.domains.a.qpm: unknown key (known: qmp, pid, lab, agent)'],
    [{ dom0: 7, domains: {} }, '$.dom0: expected a string, got number 7'],
    [{ dom0: 'host', domains: {}, extra: 1 }, '$.extra: unknown key'],
  ])('rejects %j naming the entry', (value, expected) => {
    const error = parseError(JSON.stringify(value));
    expect(error.code).toBe('DG_REGISTRY_INVALID');
    expect(error.message).toContain(`domain registry ${FILE}: ${expected}`);
  });

  it('rejects a top level that is not an object', () => {
    expect(parseError('[]').message).toContain('$: expected an object, got an array');
  });
});

describe('domain names', () => {
  it('follow the Qubes rule', () => {
    for (const ok of ['a', 'work', 'sys-usb', 'Debian_12.x', 'a'.repeat(31)]) expect(isValidDomainName(ok)).toBe(true);
    for (const bad of ['', '1a', '-a', '.a', 'a b', 'a/b', 'a:b', 'ä', 'a'.repeat(32)])
      expect(isValidDomainName(bad)).toBe(false);
  });
});

describe('findJsonErrorOffset', () => {
  it('finds the first offending character', () => {
    expect(findJsonErrorOffset('[1, 2,]')).toBe(6);
    expect(findJsonErrorOffset('{"a" : tru }')).toBe(10);
    expect(findJsonErrorOffset('{"a": "x\u0001"}')).toBe(8);
    expect(findJsonErrorOffset('{"a": "\\u12G4"}')).toBe(11);
    expect(findJsonErrorOffset('[01]')).toBe(2);
  });
});

describe('defaultRegistryFile', () => {
  it('prefers DEVGATE_DOMAINS, then XDG_STATE_HOME, then ~/.local/state', () => {
    expect(defaultRegistryFile({ DEVGATE_DOMAINS: '/x/d.json', XDG_STATE_HOME: '/s' })).toBe('/x/d.json');
    expect(defaultRegistryFile({ XDG_STATE_HOME: '/s', HOME: '/h' })).toBe('/s/devgate/domains.json');
    expect(defaultRegistryFile({ XDG_STATE_HOME: 'relative', HOME: '/h' })).toBe(
      '/h/.local/state/devgate/domains.json',
    );
    expect(defaultRegistryFile({ HOME: '/h' })).toBe('/h/.local/state/devgate/domains.json');
  });
});

describe('reading and writing', () => {
  it('reads a missing file as an empty registry', async () => {
    const file = join(await cleanup.tempDir(), 'none.json');
    await expect(readRegistry(file)).resolves.toEqual({ dom0: 'dom0', domains: {} });
  });

  it('round-trips, creating the directory, leaving no temp file behind', async () => {
    const dir = await cleanup.tempDir();
    const file = join(dir, 'state', 'devgate', 'domains.json');
    const data = { dom0: 'host', domains: { work: { qmp: '/run/work.qmp', pid: 7, lab: true } } };
    await writeRegistry(file, data);
    await expect(readRegistry(file)).resolves.toEqual(data);
    expect(await fs.readdir(join(dir, 'state', 'devgate'))).toEqual(['domains.json']);
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
  });

  it('refuses to write an invalid registry and leaves the old file intact', async () => {
    const file = join(await cleanup.tempDir(), 'domains.json');
    await writeRegistry(file, { dom0: 'dom0', domains: { a: { qmp: '/a' } } });
    const bad = { dom0: 'dom0', domains: { 'bad name': { qmp: '/b' } } };
    await expect(writeRegistry(file, bad)).rejects.toMatchObject({ code: 'DG_REGISTRY_INVALID' });
    await expect(readRegistry(file)).resolves.toEqual({ dom0: 'dom0', domains: { a: { qmp: '/a' } } });
  });

  it('names the file when it holds bad JSON', async () => {
    const file = join(await cleanup.tempDir(), 'domains.json');
    await fs.writeFile(file, '{"domains": {"a": {"qmp": "/a"}');
    await expect(readRegistry(file)).rejects.toMatchObject({
      code: 'DG_REGISTRY_INVALID',
      message: expect.stringMatching(new RegExp(`^domain registry ${file}: \\$: not valid JSON \\(line 1, column 32`)),
    });
  });

  it('updateRegistry reads, changes and writes', async () => {
    const file = join(await cleanup.tempDir(), 'domains.json');
    await updateRegistry(file, (d) => ({ ...d, domains: { ...d.domains, a: { qmp: '/a' } } }));
    await updateRegistry(file, (d) => ({ ...d, domains: { ...d.domains, b: { qmp: '/b' } } }));
    expect(Object.keys((await readRegistry(file)).domains)).toEqual(['a', 'b']);
  });

  it('getDomain throws DG_NO_SUCH_DOMAIN for an unknown name, even one on Object.prototype', () => {
    const data = { dom0: 'dom0', domains: { a: { qmp: '/a' } } };
    expect(getDomain(data, 'a', FILE)).toEqual({ qmp: '/a' });
    expect(() => getDomain(data, 'toString', FILE)).toThrow("no such domain: 'toString'");
    expect(() => getDomain(data, 'b', FILE)).toThrow(expect.objectContaining({ code: 'DG_NO_SUCH_DOMAIN' }));
  });
});

describe('a FIFO where the registry should be', () => {
  // Opening one waits for a writer (the connector's first call would hang devgated). Read in a child
  // node, so that a read that blocks fails this test by its timeout instead of hanging jest.
  const REGISTER_TS = resolve(__dirname, '../../service/src/store/testing/register-ts.cjs');
  const children = new Set<ChildProcess>();
  afterEach(() => {
    for (const child of children) child.kill('SIGKILL');
    children.clear();
  });

  /** What readRegistrySync, then readRegistry, say of `file` in a child: each 'read' or its error. */
  const readInChild = (file: string) =>
    new Promise<string[]>((done, fail) => {
      const script = `
        const registry = require(${JSON.stringify(join(__dirname, 'domain-registry.ts'))});
        const say = (error) => error.code + ': ' + error.message;
        const said = [];
        try { registry.readRegistrySync(process.argv[1]); said.push('read'); } catch (error) { said.push(say(error)); }
        registry.readRegistry(process.argv[1]).then(() => 'read', say).then((text) => {
          said.push(text);
          process.stdout.write(JSON.stringify(said));
        });`;
      const child = spawn(process.execPath, ['--conditions=@devgate/source', '-r', REGISTER_TS, '-e', script, file], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      children.add(child);
      let out = '';
      child.stdout!.setEncoding('utf8').on('data', (text: string) => (out += text));
      child.once('error', fail);
      child.once('close', () => done(out ? JSON.parse(out) : []));
    });

  it('is refused as not a regular file, at once, by both readers', async () => {
    const file = join(await cleanup.tempDir(), 'domains.json');
    execFileSync('mkfifo', [file]);
    const refusal = `DG_REGISTRY_INVALID: domain registry ${file}: $: not a regular file`;
    expect(await readInChild(file)).toEqual([refusal, refusal]);
  }, 8_000);
});

describe('a backend VM entry (agent)', () => {
  const agent = { control: '/run/u/agent.sock', exports: { 'org.devgate.export.0': '/run/u/e0.sock' }, usbvm: true };

  it('keeps where its agent and export ports are', () => {
    const data = parseRegistry(JSON.stringify({ domains: { 'sys-usb': { qmp: '/run/u.qmp', agent } } }), FILE);
    expect(data.domains['sys-usb']).toEqual({ qmp: '/run/u.qmp', agent });
  });

  it.each([
    [{ ...agent, control: 'agent.sock' }, '$.domains["sys-usb"].agent.control: expected an absolute path'],
    [{ ...agent, exports: { '../x': '/e' } }, 'not a port name'],
    [{ ...agent, exports: { e0: 3 } }, '$.domains["sys-usb"].agent.exports.e0: expected an absolute path'],
    [{ ...agent, backend: 'dom0' }, '$.domains["sys-usb"].agent.backend: unknown key'],
  ])('refuses %j', (value, expected) => {
    expect(() => parseRegistry(JSON.stringify({ domains: { 'sys-usb': { qmp: '/q', agent: value } } }), FILE)).toThrow(
      expected,
    );
  });
});
