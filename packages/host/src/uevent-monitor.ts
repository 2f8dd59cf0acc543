import { type ChildProcess, spawn } from 'node:child_process';
import { parseKeyValueLines } from './parse-udev-data.js';

export interface KernelUevent {
  readonly action: string;
  readonly devpath: string;
  readonly subsystem: string;
  readonly properties: Record<string, string>;
}

/**
 * Kernel uevents through `udevadm monitor --kernel --property`. Node has no netlink socket, and
 * spawning udevadm needs neither udevd nor a native addon. Each event is a block of KEY=VALUE lines
 * ended by a blank line, after a `KERNEL[...]` header line.
 */
export class UeventMonitor {
  private child?: ChildProcess;
  private buffer = '';

  constructor(
    private readonly onEvent: (event: KernelUevent) => void,
    private readonly onExit: (reason: string) => void,
  ) {}

  start(udevadm = 'udevadm'): void {
    const child = spawn(udevadm, ['monitor', '--kernel', '--property'], { stdio: ['ignore', 'pipe', 'ignore'] });
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
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const properties = parseKeyValueLines(block);
      if (properties.ACTION && properties.DEVPATH) {
        this.onEvent({
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
