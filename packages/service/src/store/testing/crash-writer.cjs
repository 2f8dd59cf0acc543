// The crash test's writer: opens the real SqliteStateStore on argv[2] and writes forever, printing
// one line per write only after the call that committed it has returned (the acknowledgement). The
// test SIGKILLs it at a random moment and checks that every acknowledged write survived.
//   ack audit <seq>       audit.append committed
//   ack begin <id> <seq>  journal.begin committed (pending)
//   ack done <id>         journal.complete committed
//   ack assign <seq>      assignment + its audit record, in one transaction
'use strict';
require('./register-ts.cjs');
const fs = require('node:fs');
const { SqliteStateStore } = require('../state-store.ts');

const [file, firstSeq] = process.argv.slice(2);
const store = new SqliteStateStore(file);
const say = (line) => fs.writeSync(1, line + '\n'); // synchronous: printed before the next write starts
say('ready');

for (let seq = Number(firstSeq); ; seq++) {
  const device = { devclass: 'usb', backend: 'sys-usb', portId: `1-${seq}`, frontend: 'work' };
  store.audit.append({ actor: 'crash-writer', action: 'attach', outcome: 'ok', ...device, details: { seq } });
  say(`ack audit ${seq}`);
  const entry = store.journal.begin({ op: 'attach', ...device, deviceId: `1234:5678:s${seq}:u080650` });
  say(`ack begin ${entry.id} ${seq}`);
  store.journal.complete(entry.id);
  say(`ack done ${entry.id}`);
  store.transaction(() => {
    store.assignments.add({ ...device, deviceId: '*', mode: 'auto-attach', options: { seq: String(seq) } });
    store.audit.append({ actor: 'crash-writer', action: 'assign', outcome: 'ok', ...device, details: { seq } });
  });
  say(`ack assign ${seq}`);
}
