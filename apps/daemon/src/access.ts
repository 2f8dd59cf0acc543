import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { type DaemonConfig } from './config.js';

export interface AccessLog {
  warn(message: string): void;
}

/**
 * Who may use which socket, enforced by the kernel's file permissions on the sockets themselves
 * (Node cannot read SO_PEERCRED; see ADR 0004): the read-only socket is 0660 with the read group,
 * the `.rw` socket 0600 plus a POSIX ACL entry for each allowed user and group.
 */
export function applySocketAccess(config: DaemonConfig, readSocket: string, rwSocket: string, log: AccessLog): void {
  const readGid = config.access.readGroup ? groupId(config.access.readGroup) : undefined;
  if (config.access.readGroup && readGid === undefined) {
    log.warn(`group '${config.access.readGroup}' does not exist: only root can use ${readSocket}`);
  }
  if (readGid !== undefined) fs.chownSync(readSocket, process.getuid?.() ?? 0, readGid);
  fs.chmodSync(readSocket, 0o660);
  fs.chmodSync(rwSocket, 0o600);
  const entries = [
    ...config.access.users.map((user) => `u:${user}:rw`),
    ...config.access.groups.filter((group) => groupId(group) !== undefined).map((group) => `g:${group}:rw`),
  ];
  if (entries.length === 0) return;
  try {
    execFileSync('setfacl', ['-m', entries.join(','), rwSocket], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (error) {
    log.warn(`cannot grant ${entries.join(', ')} on ${rwSocket} (is the acl package installed?): ${String(error)}`);
  }
}

export function groupId(name: string): number | undefined {
  try {
    for (const line of fs.readFileSync('/etc/group', 'utf8').split('\n')) {
      const [group, , gid] = line.split(':');
      if (group === name) return Number(gid);
    }
  } catch {
    // no /etc/group: no such group
  }
  return undefined;
}
