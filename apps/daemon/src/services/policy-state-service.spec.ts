/**
 * PolicyStateService's refusals and its audit log, without a daemon: a refusal's message echoes the
 * request, and a control character in it (or a name the store refuses) must not cost the audit record.
 */
import * as path from 'node:path';
import { DaemonEvents, SqliteStateStore } from '@devgate/service';
import { cleanupHarness, makeTempDir } from '../testing/daemon-harness.js';
import { PolicyStateService } from './policy-state-service.js';

let store: SqliteStateStore;
let service: PolicyStateService;

beforeEach(() => {
  store = new SqliteStateStore(path.join(makeTempDir('devgated-policy-refusal-'), 'state.db'));
  service = new PolicyStateService(store, new DaemonEvents());
});
afterEach(() => store.dispose());
afterAll(() => cleanupHarness());

it('audits a refusal whatever the request held, and keeps the real error', () => {
  // The API's schemas stop these before the service; devgated's other callers have none.
  expect(() => service.changeDenyList('add', 'work', ['u03\u001b[2K*'], 'test')).toThrow(
    expect.objectContaining({ code: 'DG_INVALID_INTERFACE_PATTERN' }),
  );
  expect(() => service.changeDenyList('replace', 'work\nroot', ['u03****'], 'test')).toThrow(
    expect.objectContaining({ code: 'DG_INVALID_DOMAIN_NAME' }),
  );

  const refused = store.audit.query({ action: 'deny-list', order: 'asc' });
  expect(refused.map((e) => [e.outcome, e.code, e.frontend])).toEqual([
    ['denied', 'DG_INVALID_INTERFACE_PATTERN', 'work'],
    ['denied', 'DG_INVALID_DOMAIN_NAME', undefined],
  ]);
  // The escape sequence is gone from the record (a terminal showing the log would have run it).
  expect(refused[0].reason).toContain('u03');
  expect(refused[0].reason).not.toContain('\u001b');
  expect(refused[1].details).toEqual({ op: 'replace', requested: ['u03****'], invalid: { frontend: 'work root' } });
  expect(store.denyLists.all()).toEqual([]);
});
