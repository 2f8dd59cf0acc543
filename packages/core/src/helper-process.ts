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

/** The first executable `name` on PATH. */
export function findExecutable(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const file = path.join(dir || '.', name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return file;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}
