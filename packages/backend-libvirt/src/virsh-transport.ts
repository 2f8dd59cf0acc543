/**
 * How devgate talks to libvirt: the one small interface the connector uses, and its implementation
 * over `virsh` (ADR 0008). Calls run one `virsh` process each, with several commands chained in one
 * process where a step needs a read-back (one connection, one spawn). Events come from one
 * long-lived `virsh event --all --loop` per URI, respawned with backoff when it exits (it does when
 * libvirtd restarts); every (re)connection is announced, so the connector re-reads every domain.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Observable, Subject, share } from 'rxjs';
import { Errors, endingWithThisProcess } from '@devgate/core';
import { socketDirOf, watchTowards } from './socket-watch.js';

/** How often a libvirtd out of reach is tried while its socket's directory is watched. */
const WATCHED_RETRY_MS = 60_000;
/** From a change on the way to the socket to the next try: the daemon binds its socket, then listens. */
const SOCKET_SETTLE_MS = 100;

/** What one call printed. libvirt reports errors as `error: ...` lines on stderr. */
export interface VirshResult {
  readonly stdout: string;
  readonly stderr: string;
  /** virsh's exit code: 0 even when a chained command failed, so callers read back the truth. */
  readonly code: number;
}

/** A line of `virsh event --timestamp`, parsed; `connected` marks a (re)connection of the stream. */
export type LibvirtEvent =
  | { readonly kind: 'connected' }
  | { readonly kind: 'disconnected'; readonly reason: string }
  | { readonly kind: 'lifecycle'; readonly domain: string; readonly detail: string }
  | {
      readonly kind: 'device-removed' | 'device-added' | 'device-removal-failed';
      readonly domain: string;
      readonly alias: string;
    }
  | { readonly kind: 'other'; readonly domain: string; readonly event: string; readonly detail: string };

export interface LibvirtTransport {
  readonly uri: string;
  /** Runs one or more virsh commands (each an argv, quoted here) in one process, in order. */
  call(commands: readonly (readonly string[])[], timeoutMs?: number): Promise<VirshResult>;
  /** Hot: libvirt's events for every domain, with `connected` after each (re)connection. */
  readonly events$: Observable<LibvirtEvent>;
  dispose(): void;
}

export interface VirshTransportOptions {
  /** The virsh binary; default `virsh` from PATH. */
  readonly virsh?: string;
  /** Environment for virsh (e.g. LIBVIRT_DEFAULT_URI is ignored: the URI is always passed). */
  readonly env?: NodeJS.ProcessEnv;
  /**
   * Backoff of the event process after it exits: first delay, doubled up to 5 s. Default 100 ms.
   * When libvirtd is out of reach and its socket is local, the next try waits for the socket instead.
   */
  readonly respawnMs?: number;
}

/** Quotes one argument for virsh's own command parser (same rules as sh: single quotes). */
export function virshQuote(arg: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** Joins argvs into one virsh command string (`cmd1 a b; cmd2 c`). */
export function virshScript(commands: readonly (readonly string[])[]): string {
  return commands.map((argv) => argv.map(virshQuote).join(' ')).join(' ; ');
}

const EVENT_LINE = /^(?:\S+ \S+: )?event '([^']+)' for domain '(.*?)'(?:: (.*))?$/;
/**
 * virsh prints a domain's name as it is, and a name may hold `': `. Lifecycle and device details
 * never hold a quote, so for those the name runs to the last quote: a domain called
 * `work': Stopped Destroyed #` cannot pass its own events off as `work`'s.
 */
const DOMAIN_EVENT_LINE =
  /^(?:\S+ \S+: )?event '(lifecycle|device-removed|device-added|device-removal-failed)' for domain '(.*)'(?:: ([^']*))?$/;

/** One line of `virsh event --all --loop --timestamp`; undefined for anything else. */
export function parseEventLine(line: string): LibvirtEvent | undefined {
  const match = DOMAIN_EVENT_LINE.exec(line.trim()) ?? EVENT_LINE.exec(line.trim());
  if (!match) return undefined;
  const [, event, domain, detail = ''] = match;
  switch (event) {
    case 'lifecycle':
      return { kind: 'lifecycle', domain, detail };
    case 'device-removed':
    case 'device-added':
    case 'device-removal-failed':
      return { kind: event, domain, alias: detail.trim() };
    default:
      return { kind: 'other', domain, event, detail };
  }
}

/** The errors of a call: `error: ...` lines, joined, without the prefix. */
export function virshErrors(stderr: string): string[] {
  return stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('error: '))
    .map((l) => l.slice('error: '.length));
}

/**
 * Turns a failed call into devgate's error when the cause is the connection (libvirtd down or out of
 * reach, no permission on its socket); undefined when it is about what was asked.
 */
export function connectionError(uri: string, stderr: string): Error | undefined {
  const text = virshErrors(stderr).join('; ') || stderr.trim();
  if (/Permission denied|authentication (failed|unavailable)|access denied|not authorized/i.test(text)) {
    return Errors.libvirtPermission({ uri, reason: text });
  }
  if (
    /failed to connect to the hypervisor|Failed to connect socket|Connection refused|No such file or directory.*sock|Cannot recv data|End of file while reading|no connection driver available|unable to connect to server|Connection reset/i.test(
      text,
    )
  ) {
    return Errors.libvirtUnreachable({ uri, reason: text });
  }
  return undefined;
}

export class VirshTransport implements LibvirtTransport {
  readonly events$: Observable<LibvirtEvent>;
  private disposed = false;
  private readonly children = new Set<ChildProcess>();
  private readonly stop = new Subject<void>();

  constructor(
    readonly uri: string,
    private readonly options: VirshTransportOptions = {},
  ) {
    this.events$ = new Observable<LibvirtEvent>((subscriber) => {
      let child: ChildProcess | undefined;
      let timer: NodeJS.Timeout | undefined;
      const firstDelay = options.respawnMs ?? 100;
      let delay = firstDelay;
      let closed = false;
      /** Set while libvirtd is out of reach and its socket's directory can be watched. */
      let stopWatching: (() => void) | undefined;
      const retry = (after: number) => {
        clearTimeout(timer);
        timer = setTimeout(start, after);
        timer.unref?.();
      };
      const start = () => {
        stopWatching?.();
        stopWatching = undefined;
        if (closed || this.disposed) return;
        // `uri` needs the connection, so its line says the event stream is (about to be) registered.
        const proc = this.spawnVirsh(['uri ; event --all --loop --timestamp'], { endingWithUs: true });
        child = proc;
        let buffer = '';
        let stderr = '';
        let announced = false;
        proc.stdout!.setEncoding('utf8');
        proc.stdout!.on('data', (chunk: string) => {
          buffer += chunk;
          let nl: number;
          while ((nl = buffer.indexOf('\n')) >= 0) {
            const line = buffer.slice(0, nl);
            buffer = buffer.slice(nl + 1);
            if (!announced) {
              announced = true;
              delay = firstDelay;
              subscriber.next({ kind: 'connected' });
              continue;
            }
            const event = parseEventLine(line);
            if (event) subscriber.next(event);
          }
        });
        proc.stderr!.setEncoding('utf8');
        proc.stderr!.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-4096)));
        proc.on('close', () => {
          this.children.delete(proc);
          if (child === proc) child = undefined;
          if (closed || this.disposed) return;
          subscriber.next({ kind: 'disconnected', reason: virshErrors(stderr).join('; ') || 'virsh event exited' });
          // Out of reach (no libvirtd here, or not yet): the next try is when its socket appears,
          // and a slow timer in case the watch misses it.
          const socketDir =
            !announced && connectionError(this.uri, stderr) ? socketDirOf(this.uri, options.env) : undefined;
          stopWatching = socketDir
            ? watchTowards(socketDir, () => {
                delay = firstDelay;
                retry(SOCKET_SETTLE_MS);
              })
            : undefined;
          if (stopWatching) return retry(WATCHED_RETRY_MS);
          retry(delay);
          delay = Math.min(delay * 2, 5_000);
        });
        proc.on('error', () => undefined);
      };
      start();
      const stopped = this.stop.subscribe(() => subscriber.complete());
      return () => {
        closed = true;
        stopped.unsubscribe();
        stopWatching?.();
        if (timer) clearTimeout(timer);
        child?.kill('SIGTERM');
      };
    }).pipe(share());
  }

  call(commands: readonly (readonly string[])[], timeoutMs = 30_000): Promise<VirshResult> {
    if (this.disposed)
      return Promise.reject(Errors.libvirtUnreachable({ uri: this.uri, reason: 'the connector is disposed' }));
    return new Promise((resolve, reject) => {
      const proc = this.spawnVirsh([virshScript(commands)]);
      let stdout = '';
      let stderr = '';
      proc.stdout!.setEncoding('utf8');
      proc.stderr!.setEncoding('utf8');
      proc.stdout!.on('data', (c: string) => (stdout += c));
      proc.stderr!.on('data', (c: string) => (stderr += c));
      const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
      proc.on('error', (error) => {
        clearTimeout(timer);
        reject(Errors.libvirtUnreachable({ uri: this.uri, reason: `cannot run virsh: ${error.message}` }));
      });
      proc.on('close', (code, signal) => {
        clearTimeout(timer);
        this.children.delete(proc);
        if (signal === 'SIGKILL') {
          reject(Errors.libvirtUnreachable({ uri: this.uri, reason: `no answer within ${timeoutMs} ms` }));
          return;
        }
        const failed = connectionError(this.uri, stderr);
        if (failed) reject(failed);
        else resolve({ stdout, stderr, code: code ?? 1 });
      });
    });
  }

  /** `endingWithUs`: a process that lives as long as the stream, killed with devgated whatever kills it. */
  private spawnVirsh(args: readonly string[], { endingWithUs = false } = {}): ChildProcess {
    const argv = ['-q', '-c', this.uri, ...args];
    const [command, commandArgs] = endingWithUs
      ? endingWithThisProcess(this.options.virsh ?? 'virsh', argv)
      : [this.options.virsh ?? 'virsh', argv];
    const proc = spawn(command, commandArgs, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...(this.options.env ?? process.env), LC_ALL: 'C' },
    });
    this.children.add(proc);
    return proc;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.stop.next();
    this.stop.complete();
    for (const child of this.children) child.kill('SIGTERM');
    this.children.clear();
  }
}
