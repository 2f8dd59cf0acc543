// Each CLI spec file gets its own devgated state directory ($DEVGATE_STATE_DIR), removed after it,
// so no test reads or writes the machine's /var/lib/devgate.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-cli-state-'));
process.env.DEVGATE_STATE_DIR = dir;
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
