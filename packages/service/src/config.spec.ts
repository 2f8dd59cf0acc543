import { checkConfig, defaultConfig } from './config.js';

// Who may change state by default: nobody but root. The read group (`devgate`) reads through
// devgate.sock; only users and groups the configuration names are let into devgate.sock.rw.
it('as root, the default lets the read group read and nobody but root write', () => {
  expect(process.getuid?.()).toBe(0);
  expect(defaultConfig({}).access).toEqual({ readGroup: 'devgate', users: [], groups: [] });
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
