/**
 * An input forward (Qubes' input proxy, sending side): the events of one input device's event nodes,
 * read as the kernel reports them and sent to devgated in whole frames, at most one message every
 * `intervalMs` (a fast mouse reports 1,000 frames a second; the frontend needs no more than its
 * display shows). devgated decides where they go and what of them passes; this side only reads.
 *
 * Each node is read by a `cat` of its own: a read of an event node blocks until the device reports,
 * and Node's file reads would hold a worker thread each for as long (there are four).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EventEmitter } from 'node:events';
import { type InputForwardSpec, MAX_INPUT_EVENTS } from '@devgate/backend-agent';
import { majorMinorOf } from './device-numbers.js';
import { ExportError } from './exports.js';

/** `struct input_event`: a timeval (two longs), then u16 type, u16 code, s32 value. */
const EVENT_BYTES = ['ia32', 'arm'].includes(process.arch) ? 16 : 24;
const EV_SYN = 0;
const SYN_REPORT = 0;

type WireEvent = [node: number, type: number, code: number, value: number];

export interface InputForwardEnv {
  /** Where event nodes are: `/dev/input`. */
  readonly inputDir: string;
  readonly cat?: string;
  readonly intervalMs?: number;
  readonly send: (events: readonly WireEvent[]) => void;
}

/** Emits `ended` (reason) once, when a node goes or the forward is stopped. */
export class InputForward extends EventEmitter {
  private readonly readers: ChildProcess[] = [];
  /** Whole frames not sent yet, and each node's frame in the making. */
  private ready: WireEvent[] = [];
  private readonly partial = new Map<number, WireEvent[]>();
  private lastSent = 0;
  private timer?: NodeJS.Timeout;
  private ended = false;

  constructor(
    readonly spec: InputForwardSpec,
    private readonly env: InputForwardEnv,
  ) {
    super();
  }

  /** Checks every node is the one devgated listed, then reads them all. */
  start(): void {
    const files = this.spec.nodes.map(({ devname, majorMinor }) => {
      if (!/^event\d{1,4}$/.test(devname)) throw new ExportError('BAD_REQUEST', `${devname} is not an event node`);
      const file = path.join(this.env.inputDir, devname);
      const stat = fs.statSync(file, { bigint: true, throwIfNoEntry: false });
      if (!stat?.isCharacterDevice()) throw new ExportError('DEVICE_CHANGED', `${file} is not an event node`);
      const actual = majorMinorOf(stat.rdev);
      if (actual !== majorMinor) throw new ExportError('DEVICE_CHANGED', `${file} is ${actual}, not ${majorMinor}`);
      return file;
    });
    files.forEach((file, index) => this.read(file, index));
  }

  private read(file: string, index: number): void {
    const reader = spawn(this.env.cat ?? 'cat', [file], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.readers.push(reader);
    let rest: Buffer = Buffer.alloc(0);
    let stderr = '';
    reader.stdout!.on('data', (chunk: Buffer) => {
      const bytes = rest.length ? Buffer.concat([rest, chunk]) : chunk;
      const whole = bytes.length - (bytes.length % EVENT_BYTES);
      for (let at = 0; at < whole; at += EVENT_BYTES) {
        const offset = at + EVENT_BYTES - 8;
        this.take(index, bytes.readUInt16LE(offset), bytes.readUInt16LE(offset + 2), bytes.readInt32LE(offset + 4));
      }
      rest = bytes.subarray(whole);
    });
    reader.stderr!.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-200)));
    reader.on('error', (error) => this.end(`reading ${file}: ${error.message}`));
    reader.on('close', () => this.end(`${file} went (${stderr.trim().split('\n').pop() || 'end of file'})`));
  }

  private take(node: number, type: number, code: number, value: number): void {
    const frame = this.partial.get(node) ?? [];
    frame.push([node, type, code, value]);
    if (type !== EV_SYN || code !== SYN_REPORT) {
      // A frame longer than a message can hold is no device's: dropped.
      this.partial.set(node, frame.length < MAX_INPUT_EVENTS ? frame : []);
      return;
    }
    this.partial.delete(node);
    if (this.ready.length + frame.length > MAX_INPUT_EVENTS) this.flush();
    this.ready.push(...frame);
    this.schedule();
  }

  private schedule(): void {
    if (this.timer) return;
    const wait = Math.max(0, this.lastSent + (this.env.intervalMs ?? 16) - Date.now());
    if (wait === 0) return this.flush();
    this.timer = setTimeout(() => this.flush(), wait);
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.ready.length === 0 || this.ended) return;
    this.lastSent = Date.now();
    const events = this.ready;
    this.ready = [];
    this.env.send(events);
  }

  /** Stops reading (idempotent); what was read and not sent is dropped. */
  end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.timer);
    for (const reader of this.readers) reader.kill();
    this.emit('ended', reason);
  }
}
