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
  const { readGroup, users, groups } = config.access;
  const readGid = readGroup ? groupId(readGroup) : undefined;
  if (readGroup && readGid === undefined) {
    log.warn(`group '${readGroup}' does not resolve (getent group ${readGroup}): only root can use ${readSocket}`);
  }
  if (readGid !== undefined) fs.chownSync(readSocket, process.getuid?.() ?? 0, readGid);
  fs.chmodSync(readSocket, READ_SOCKET_MODE);
  fs.chmodSync(rwSocket, RW_SOCKET_MODE);
  const grants = [
    ...users.map((name) => ({ kind: 'user', database: 'passwd', tag: 'u', name, id: userId(name) })),
    ...groups.map((name) => ({ kind: 'group', database: 'group', tag: 'g', name, id: groupId(name) })),
  ];
  // One entry at a time: a name that does not resolve must not cost the others their access.
  for (const { kind, database, tag, name, id } of grants) {
    if (id === undefined) {
      log.warn(`${kind} '${name}' does not resolve (getent ${database} ${name}): no access to ${rwSocket} for it`);
      continue;
    }
    try {
      // By number: the entry is the id resolved here, whatever setfacl's own lookup would find.
      execFileSync('setfacl', ['-m', `${tag}:${id}:rw`, rwSocket], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (error) {
      const reason = (error as { stderr?: Buffer }).stderr?.toString().trim() || (error as Error).message;
      log.warn(`cannot give ${kind} '${name}' access to ${rwSocket} (is the acl package installed?): ${reason}`);
    }
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

/** A user's uid through the system's name service (files, LDAP, sssd: whatever nsswitch.conf lists). */
export function userId(name: string): number | undefined {
  return nameServiceId('passwd', name);
}

/** A group's gid through the system's name service, as userId. */
export function groupId(name: string): number | undefined {
  return nameServiceId('group', name);
}

function nameServiceId(database: 'passwd' | 'group', name: string): number | undefined {
  // getent would take a leading '-' as an option; ':' and newlines cannot be in a name.
  if (!/^[^-:\n][^:\n]*$/.test(name)) return undefined;
  let entry: string;
  try {
    // Bounded: an unreachable directory server must not hold devgated's start for long.
    entry = execFileSync('getent', [database, name], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 10_000,
    });
  } catch (error) {
    // No getent (a minimal image): the local file alone. Otherwise (exit 2): no such name.
    return (error as NodeJS.ErrnoException).code === 'ENOENT' ? fileId(`/etc/${database}`, name) : undefined;
  }
  return idField(entry.split('\n')[0]);
}

function fileId(file: string, name: string): number | undefined {
  try {
    const line = fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .find((l) => l.split(':')[0] === name);
    return line === undefined ? undefined : idField(line);
  } catch {
    return undefined;
  }
}

/** The third field of a passwd or group line: the uid or gid. */
function idField(line: string): number | undefined {
  const field = line.split(':')[2];
  return field !== undefined && /^\d+$/.test(field) ? Number(field) : undefined;
}
