// The quick path: the most common read-only commands answered from devgated with nothing loaded
// but this file, @devgate/client (node:net) and the formatters, so `devgate list` costs little more
// than starting Node. Anything else (or no daemon) falls through to the full CLI.
import { type DeviceJson } from '@devgate/core';
import { ApiError, callApi, daemonPresent, resolveSocket } from '@devgate/client';
import type * as formats from './format.js';
import { exitQuietlyOnClosedPipe } from './io.js';

type Formats = typeof formats;
type Plan = { path: string; render: (devices: DeviceJson[], formats: Formats) => string };

function plan(prog: string, argv: readonly string[]): Plan | undefined {
  if (prog === 'devgate') {
    if (argv[0] !== 'list') return undefined;
    const flags = new Set<string>();
    let devclass: string | undefined;
    for (let i = 1; i < argv.length; i++) {
      if (argv[i] === '--json' || argv[i] === '--all') flags.add(argv[i]);
      else if (argv[i] === '--class' && /^[a-z][a-z0-9-]*$/.test(argv[i + 1] ?? '')) devclass = argv[++i];
      else return undefined;
    }
    const query = new URLSearchParams();
    if (devclass) query.set('class', devclass);
    if (flags.has('--all')) query.set('all', 'true');
    return {
      path: `/v1/devices?${query}`,
      render: (devices, f) =>
        flags.has('--json')
          ? JSON.stringify(devices, null, 2) + '\n'
          : f.formatDevgateTable(devices, flags.has('--all')),
    };
  }
  const devclass = prog.startsWith('qvm-') && prog !== 'qvm-device' ? prog.slice(4) : undefined;
  if (!devclass || argv.length > 1) return undefined;
  const path = `/v1/devices?class=${devclass}`;
  if (argv[0] === '-l' || argv[0] === '--list' || (devclass === 'usb' && argv.length === 0)) {
    return { path, render: (d, f) => (devclass === 'block' ? f.formatLegacyBlockList(d) : f.formatLegacyList(d)) };
  }
  if (argv.length === 0 || ['list', 'ls', 'l'].includes(argv[0])) {
    return { path, render: (d, f) => f.formatQubesTable(d, Boolean(process.stdout.isTTY)) };
  }
  return undefined;
}

/** Handles the command if it can; resolves false to let the full CLI run it. */
export async function quick(prog: string, argv: readonly string[]): Promise<boolean> {
  exitQuietlyOnClosedPipe();
  const wanted = plan(prog, argv);
  const socket = resolveSocket();
  if (!wanted || !daemonPresent(socket)) return false;
  try {
    const answer = callApi<{ devices: DeviceJson[] }>(socket, 'GET', wanted.path);
    // Load the formatters while the daemon answers (require: `import()` would start the ESM loader).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const formats = require('./format.js') as Formats;
    process.stdout.write(wanted.render((await answer).devices, formats));
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.code === 'DG_DAEMON_UNAVAILABLE') return false;
    throw error;
  }
}
