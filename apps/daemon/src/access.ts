import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import type * as net from 'node:net';
import { type DaemonConfig } from '@devgate/service';

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
  fs.chmodSync(readSocket, READ_SOCKET_MODE);
  fs.chmodSync(rwSocket, RW_SOCKET_MODE);
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

/** The modes the sockets are created with, before anyone else is let in by group or ACL. */
export const READ_SOCKET_MODE = 0o660;
export const RW_SOCKET_MODE = 0o600;

/**
 * Listens on a new Unix socket `file` that never exists, even for an instant, with wider
 * permissions than `mode`: bind(2) creates the file with 0777 minus the process umask, so the umask
 * is narrowed to leave only `mode` for exactly that call (net.Server.listen binds a path before it
 * returns) and restored at once. Owners, groups and ACLs come after (applySocketAccess).
 */
export function listenOnNewSocket(server: net.Server, file: string, mode: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const failed = (error: Error) => {
      server.off('listening', listening);
      reject(error);
    };
    const listening = () => {
      server.off('error', failed);
      resolve();
    };
    server.once('error', failed).once('listening', listening);
    const previous = process.umask(0o777 & ~mode);
    try {
      server.listen({ path: file });
    } finally {
      process.umask(previous);
    }
  });
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
