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
