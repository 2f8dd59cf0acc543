/**
 * Long-lived helpers (udevadm monitor, virsh event) must end with the process that started them:
 * a devgated killed with SIGKILL left its monitors running until their next write. Node cannot set
 * a child's parent-death signal; util-linux's `setpriv --pdeathsig` sets it and then runs the helper.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

let setpriv: string | null | undefined;

/** The command line that runs `command` so that it gets SIGTERM when this process dies. */
export function endingWithThisProcess(command: string, args: readonly string[]): [string, string[]] {
  setpriv ??= findExecutable('setpriv') ?? null;
  return setpriv ? [setpriv, ['--pdeathsig', 'SIGTERM', '--', command, ...args]] : [command, [...args]];
}

/** `name` itself when it is a path, else the first executable `name` on PATH. */
export function findExecutable(name: string): string | undefined {
  const candidates = name.includes('/')
    ? [name]
    : (process.env.PATH ?? '/usr/bin:/bin').split(':').map((dir) => path.join(dir || '.', name));
  return candidates.find(isExecutable);
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
