// The quick path: the most common commands answered by devgated with nothing loaded but this file,
// @devgate/client (node:net) and the formatters, so `devgate list` or `qvm-block attach VM DEVICE`
// costs little more than starting Node. Anything else (or no daemon) falls through to the full CLI.
import { type DeviceJson } from '@devgate/core';
import { ApiError, callApi, daemonPresent, nobodyListens, resolveSocket } from '@devgate/client';
import type * as formats from './format.js';
import { exitQuietlyOnClosedPipe } from './io.js';

type Formats = typeof formats;
/** A listing (GET, printed) or a change (POST, which prints nothing when it succeeds, as Qubes' tools). */
type Plan =
  | { method: 'GET'; path: string; render: (devices: DeviceJson[], formats: Formats) => string }
  | { method: 'POST'; path: string; body: Record<string, unknown> };

/** What the quick path needs of the whole CLI: its report of an error devgated answered. */
export interface WholeCli {
  reportDaemonError(prog: string, error: ApiError): number;
}

const ATTACH = new Set(['attach', 'at', 'a']);
const DETACH = new Set(['detach', 'dt', 'd']);

/**
 * `qvm-{block,usb,pci} attach VM DEVICE` and `detach VM [DEVICE]` with no option: what the whole CLI
 * sends devgated for them, word for word. Anything with an option (or an old `-a`/`-d` form) is the
 * whole CLI's.
 */
function change(devclass: string, argv: readonly string[]): Plan | undefined {
  if (argv.some((arg) => arg.startsWith('-'))) return undefined;
  const [command, frontend, device] = argv;
  if (ATTACH.has(command) && argv.length === 3) {
    return { method: 'POST', path: '/v1/attach', body: { class: devclass, frontend, device, options: {} } };
  }
  if (DETACH.has(command) && (argv.length === 2 || argv.length === 3)) {
    return { method: 'POST', path: '/v1/detach', body: { class: devclass, frontend, ...(device ? { device } : {}) } };
  }
  return undefined;
}

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
      method: 'GET',
      path: `/v1/devices?${query}`,
      render: (devices, f) =>
        flags.has('--json')
          ? JSON.stringify(devices, null, 2) + '\n'
          : f.formatDevgateTable(devices, flags.has('--all')),
    };
  }
  const devclass = prog.startsWith('qvm-') && prog !== 'qvm-device' ? prog.slice(4) : undefined;
  if (!devclass) return undefined;
  if (argv.length > 1) return change(devclass, argv);
  const path = `/v1/devices?class=${devclass}`;
  if (argv[0] === '-l' || argv[0] === '--list' || (devclass === 'usb' && argv.length === 0)) {
    return {
      method: 'GET',
      path,
      render: (d, f) => (devclass === 'block' ? f.formatLegacyBlockList(d) : f.formatLegacyList(d)),
    };
  }
  if (argv.length === 0 || ['list', 'ls', 'l'].includes(argv[0])) {
    return { method: 'GET', path, render: (d, f) => f.formatQubesTable(d, Boolean(process.stdout.isTTY)) };
  }
  return undefined;
}

/**
 * Handles the command if it can; resolves false to let the full CLI run it. An error devgated answers
 * is reported by the whole CLI (`cli`, loaded then), as it reports it: a change is never sent twice.
 */
export async function quick(prog: string, argv: readonly string[], cli: () => WholeCli): Promise<boolean> {
  exitQuietlyOnClosedPipe();
  const wanted = plan(prog, argv);
  const socket = resolveSocket();
  if (!wanted || !daemonPresent(socket)) return false;
  try {
    if (wanted.method === 'POST') {
      await callApi(socket, 'POST', wanted.path, wanted.body);
      return true;
    }
    const answer = callApi<{ devices: DeviceJson[] }>(socket, 'GET', wanted.path);
    // Load the formatters while the daemon answers (require: `import()` would start the ESM loader).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const formats = require('./format.js') as Formats;
    process.stdout.write(wanted.render((await answer).devices, formats));
    return true;
  } catch (error) {
    // Nobody listens (a devgated that died left its socket): nothing was sent, the full CLI works
    // in-process. Gone before it answered a listing: the full CLI lists in-process.
    if (nobodyListens(error)) return false;
    if (error instanceof ApiError && error.code === 'DG_DAEMON_UNAVAILABLE' && wanted.method === 'GET') return false;
    if (!(error instanceof ApiError)) throw error;
    process.exitCode = cli().reportDaemonError(prog, error);
    return true;
  }
}
