import { type ChildProcess, spawn } from 'node:child_process';
import { endingWithThisProcess } from '@devgate/core';
import { parseKeyValueLines } from './parse-udev-data.js';

export interface KernelUevent {
  /**
   * `kernel`: the kernel's uevent, as it happened. `udev`: the same event (same SEQNUM) once udevd
   * has processed it: its properties carry udev's findings (ID_FS_LABEL, ...) and its database
   * entry is written. Hosts without udevd only ever send `kernel` events.
   */
  readonly source: 'kernel' | 'udev';
  readonly action: string;
  readonly devpath: string;
  readonly subsystem: string;
  readonly properties: Record<string, string>;
}

/**
 * Kernel uevents, and udevd's events where a udevd runs, through `udevadm monitor --kernel --udev
 * --property`. Node has no netlink socket, and spawning udevadm needs neither udevd nor a native
 * addon. Each event is a block of KEY=VALUE lines ended by a blank line, after a `KERNEL[...]` or
 * `UDEV  [...]` header line. The two kinds come from two sockets: a device's udev event can arrive
 * after a later kernel event of the same device (its removal), so listeners order them by SEQNUM.
 */
export class UeventMonitor {
  private child?: ChildProcess;
  private buffer = '';

  constructor(
    private readonly onEvent: (event: KernelUevent) => void,
    private readonly onExit: (reason: string) => void,
    /** udevadm has bound its sockets (its header is printed after that): no event is missed from now. */
    private readonly onListening: () => void = () => {},
  ) {}

  /** `udev: false`: the kernel's events only, as on a host without udevd. */
  start(udevadm = 'udevadm', { udev = true }: { readonly udev?: boolean } = {}): void {
    const [command, args] = endingWithThisProcess(udevadm, [
      'monitor',
      '--kernel',
      ...(udev ? ['--udev'] : []),
      '--property',
    ]);
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'ignore'] });
    this.child = child;
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => this.feed(chunk));
    child.on('error', (error) => this.stopped(`udevadm failed: ${error.message}`));
    child.on('exit', (code, signal) => this.stopped(`udevadm exited (${signal ?? code})`));
  }

  private feed(chunk: string): void {
    this.buffer += chunk;
    // Bound memory even if udevadm never prints a blank line.
    if (this.buffer.length > 1 << 20) this.buffer = this.buffer.slice(-(1 << 16));
    let end: number;
    while ((end = this.buffer.indexOf('\n\n')) >= 0) {
      const block = this.buffer.slice(0, end).replace(/^\n+/, '');
      this.buffer = this.buffer.slice(end + 2);
      const properties = parseKeyValueLines(block);
      const header = block.split('\n', 1)[0];
      const source = /^UDEV\b/.test(header) ? 'udev' : /^KERNEL\b/.test(header) ? 'kernel' : undefined;
      if (!source && /^KERNEL - /m.test(block)) this.onListening();
      if (source && properties.ACTION && properties.DEVPATH) {
        this.onEvent({
          source,
          action: properties.ACTION,
          devpath: properties.DEVPATH,
          subsystem: properties.SUBSYSTEM ?? '',
          properties,
        });
      }
    }
  }

  private stopped(reason: string): void {
    if (!this.child) return;
    this.child = undefined;
    this.onExit(reason);
  }

  stop(): void {
    const child = this.child;
    this.child = undefined;
    child?.kill();
  }
}
