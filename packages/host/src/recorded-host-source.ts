import { type Observable, of } from 'rxjs';
import { type DeviceSource, type HostTree } from '@devgate/core';
import { loadRecording } from './recording.js';

/**
 * A backend domain replayed from a recording of a real machine: what a user attaches to a bug
 * report, and what tests run against where this machine lacks the hardware.
 */
export class RecordedHostSource implements DeviceSource {
  readonly id: string;
  readonly hotplug = 'static';
  readonly trees$: Observable<HostTree>;
  readonly format: string;
  private readonly recording: ReturnType<typeof loadRecording>;

  constructor(
    readonly file: string,
    readonly backend = 'dom0',
  ) {
    this.id = `recording:${file}`;
    this.recording = loadRecording(file);
    this.format = this.recording.format;
    this.trees$ = of(this.recording.tree);
  }

  snapshot(): HostTree {
    return this.recording.tree;
  }

  dispose(): void {
    this.recording.dispose();
  }
}
