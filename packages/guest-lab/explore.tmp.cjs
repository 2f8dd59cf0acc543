require('reflect-metadata');
const { bootGuest } = require('./dist/index.js');
(async () => {
  const g = await bootGuest({ extraQemuArgs: process.env.CPU ? ['-cpu', process.env.CPU] : [], name: 'explore', devices: [{ kind: 'usb-kbd' }, { kind: 'usb-tablet' }, { kind: 'usb-storage' }, { kind: 'usb-serial' }] });
  console.log('booted', g.bootMs);
  try {
    for (const cmd of process.argv.slice(2)) {
      const r = await g.exec(cmd);
      console.log(`$ ${cmd}  [${r.code} ${r.ms}ms]\n${r.stdout}${r.stderr}`);
    }
  } finally { await g.dispose(); }
})().catch((e) => { console.error('FAILED', e); process.exitCode = 1; });
