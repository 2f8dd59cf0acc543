import { type DeviceInfo, deviceJsonBytes, keepDeviceJson } from '@devgate/core';

/** Devices per chunk: a changed device costs its chunk, not the whole answer. */
const CHUNK = 256;
const OPEN = Buffer.from('{"devices":[');
const CLOSE = Buffer.from(']}');
const COMMA = 0x2c;

interface Chunk {
  /** The device objects it was made of (a changed device is a new object). */
  readonly devices: readonly DeviceInfo[];
  /** Their serialized JSON, comma-separated, with a leading comma unless it is the first chunk. */
  readonly bytes: Buffer;
}

/**
 * One list answer (`{"devices":[...]}`) kept as chunks of serialized devices, each made from the
 * devices' own serialized JSON (`deviceJsonBytes`). After a device event the next answer reuses
 * every chunk whose devices are the same objects, and makes again only those with a device that
 * changed (or after one that came or went): a list of 10,000 devices after one changed is one
 * chunk of 256 serialized devices, not 10,000. The chunks are written as they are: no copy of the
 * whole answer is made.
 */
export class ListAnswer {
  private chunks: Chunk[] = [];
  private stale = true;
  private parts: Buffer[] = [];
  private length = 0;

  /** A device event happened: the next answer checks its chunks against the devices listed then. */
  invalidate(): void {
    this.stale = true;
  }

  /**
   * The answer's parts and their total length, for these devices (the kernel's list, in its order);
   * `made`: whether it was made now (not the answer kept since the last device event).
   */
  answer(
    list: () => readonly DeviceInfo[],
    { reuse = true } = {},
  ): { parts: readonly Buffer[]; length: number; made: boolean } {
    const made = this.stale || !reuse;
    if (made) {
      const devices = list();
      const chunks: Chunk[] = [];
      for (let start = 0, index = 0; start < devices.length; start += CHUNK, index++) {
        const end = Math.min(start + CHUNK, devices.length);
        const known = reuse ? this.chunks[index] : undefined;
        chunks.push(known && sameDevices(known.devices, devices, start, end) ? known : chunkOf(devices, start, end));
      }
      this.chunks = chunks;
      this.parts = [OPEN, ...chunks.map((c) => c.bytes), CLOSE];
      this.length = this.parts.reduce((sum, part) => sum + part.length, 0);
      this.stale = false;
    }
    return { parts: this.parts, length: this.length, made };
  }
}

function sameDevices(
  known: readonly DeviceInfo[],
  devices: readonly DeviceInfo[],
  start: number,
  end: number,
): boolean {
  if (known.length !== end - start) return false;
  for (let i = start; i < end; i++) if (known[i - start] !== devices[i]) return false;
  return true;
}

function chunkOf(devices: readonly DeviceInfo[], start: number, end: number): Chunk {
  const serialized: Buffer[] = [];
  let length = start > 0 ? 1 : 0;
  for (let i = start; i < end; i++) {
    const bytes = deviceJsonBytes(devices[i]);
    serialized.push(bytes);
    length += bytes.length + (i > start ? 1 : 0);
  }
  // Its own memory (not the shared pool's slabs), outliving the answer while its devices do.
  const bytes = Buffer.allocUnsafeSlow(length);
  let at = 0;
  serialized.forEach((device, i) => {
    if (i > 0 || start > 0) bytes[at++] = COMMA;
    bytes.set(device, at);
    // From now on each device's JSON is its place in the chunk: one copy of it, not two.
    keepDeviceJson(devices[start + i], bytes.subarray(at, at + device.length));
    at += device.length;
  });
  return { devices: devices.slice(start, end), bytes };
}
