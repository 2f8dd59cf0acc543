import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type DeviceInfo } from '@devgate/core';
import { type AuditEntry, DaemonEvents, SqliteStateStore } from '@devgate/service';
import { answerId } from './policy-state-service';
import { AskService } from './asks';

// A remembered answer decides later asks with nobody asked: who gave it must be in the audit.

const stick: DeviceInfo = {
  port: { devclass: 'usb', backend: 'dom0', portId: '2-1' },
  deviceId: '0781:5567:A:u080650',
  interfaces: ['u080650'],
  data: {},
};

let dir: string;
let store: SqliteStateStore | undefined;
let asks: AskService | undefined;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-asks-'))));
afterEach(() => {
  asks?.dispose();
  store?.dispose();
  asks = store = undefined;
  fs.rmSync(dir, { recursive: true, force: true });
});

function setup() {
  store = new SqliteStateStore(path.join(dir, 'state.db'));
  const events = new DaemonEvents();
  asks = new AskService(store, events, 60_000);
  const published: AuditEntry[] = [];
  events.events$.subscribe((e) => e.type === 'audit' && published.push(e.entry));
  /** Asks about the stick, and answers the ask as soon as it is raised. */
  const askAndAnswer = async (candidates: string[], answer: Parameters<AskService['answer']>[1]) => {
    const answered = asks!.ask(stick, candidates, 'test', 'USB_Storage: test stick');
    asks!.answer(asks!.list()[0].id, answer);
    return answered;
  };
  return { store, published, askAndAnswer };
}

it('audits a remembered answer: who, which device, to which frontend, which verdict', async () => {
  const { store, published, askAndAnswer } = setup();
  await askAndAnswer(['work', 'personal'], { verdict: 'deny', remember: true, by: 'uid=1000(alice)' });
  const rows = store.audit.query({ action: 'answer' });
  expect(rows).toEqual(
    ['work', 'personal'].map((frontend) =>
      expect.objectContaining({
        actor: 'uid=1000(alice)',
        devclass: 'usb',
        backend: 'dom0',
        portId: '2-1',
        deviceId: stick.deviceId,
        frontend,
        outcome: 'ok',
        details: expect.objectContaining({
          op: 'remember',
          verdict: 'deny',
          portId: '*',
        }),
      }),
    ),
  );
  expect(published).toEqual(rows);
  // Each row names the id `devgate answers forget ID` takes for what it remembered.
  expect(rows.map((r) => r.details?.id).sort()).toEqual(store.answers.list().map(answerId).sort());
});

it('audits only the frontend an allow was remembered for, and nothing for an answer not remembered', async () => {
  const { store, askAndAnswer } = setup();
  await askAndAnswer(['work', 'personal'], { verdict: 'allow', by: 'uid=1000(alice)' });
  expect(store.audit.query({ action: 'answer' })).toEqual([]);

  await askAndAnswer(['work', 'personal'], { verdict: 'allow', frontend: 'work', remember: true, by: 'tray' });
  expect(store.audit.query({ action: 'answer' })).toEqual([
    expect.objectContaining({
      actor: 'tray',
      frontend: 'work',
      details: expect.objectContaining({ verdict: 'allow' }),
    }),
  ]);
});
