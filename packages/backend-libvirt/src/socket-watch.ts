/**
 * Where a local libvirt URI's daemon listens, and a watch for its socket to appear: a host without
 * libvirtd would otherwise spawn `virsh` on a timer for as long as devgated runs, and a spawn holds
 * devgated's event loop until the child has started (tens of ms when a hotplug burst keeps the CPUs busy).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * The directory of the socket a URI connects through, for local URIs (`qemu:///system`,
 * `qemu:///session`, `...?socket=PATH`); undefined for remote ones and drivers without a daemon.
 */
export function socketDirOf(uri: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return undefined;
  }
  const transport = url.protocol.slice(0, -1).split('+')[1];
  if (url.host !== '' || (transport !== undefined && transport !== 'unix')) return undefined;
  const socket = url.searchParams.get('socket');
  if (socket) return path.isAbsolute(socket) ? path.dirname(socket) : undefined;
  if (url.protocol.startsWith('test')) return undefined; // libvirt's test driver runs inside virsh
  if (url.pathname === '/system') return '/run/libvirt';
  if (url.pathname === '/session') {
    return env.XDG_RUNTIME_DIR
      ? path.join(env.XDG_RUNTIME_DIR, 'libvirt')
      : path.join(env.HOME ?? os.homedir(), '.cache', 'libvirt');
  }
  return undefined;
}

/**
 * Calls `changed` once an entry is created, removed or renamed in `dir`, or, while `dir` does not
 * exist, when the next directory on the way to it appears in the nearest one that does. Returns the
 * way to stop watching; undefined when nothing can be watched (the caller falls back to a timer).
 */
export function watchTowards(dir: string, changed: () => void): (() => void) | undefined {
  let existing = dir;
  while (!fs.existsSync(existing)) {
    const up = path.dirname(existing);
    if (up === existing) return undefined;
    existing = up;
  }
  const next = existing === dir ? undefined : path.relative(existing, dir).split(path.sep)[0];
  try {
    const watcher = fs.watch(existing, { persistent: false }, (event, name) => {
      // Without a name (some file systems) anything may have changed.
      if (event === 'rename' && (next === undefined || name === null || name === next)) changed();
    });
    watcher.on('error', () => undefined);
    return () => watcher.close();
  } catch {
    return undefined;
  }
}
