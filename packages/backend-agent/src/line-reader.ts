/**
 * Newline-delimited frames from a byte stream, with a bound on the length of a line: a peer that
 * sends an endless line is stopped at the bound, before its bytes are joined, parsed or kept.
 */
export class LineTooLong extends Error {
  constructor(readonly limit: number) {
    super(`a line longer than ${limit} bytes`);
  }
}

export class LineReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxLineBytes: number) {}

  /** The complete lines in `chunk` (with what came before it), without their newlines. */
  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (let newline = chunk.indexOf(0x0a); newline >= 0; newline = chunk.indexOf(0x0a, start)) {
      const piece = chunk.subarray(start, newline);
      if (this.buffered + piece.length > this.maxLineBytes) throw new LineTooLong(this.maxLineBytes);
      const line = this.chunks.length ? Buffer.concat([...this.chunks, piece]) : piece;
      this.chunks = [];
      this.buffered = 0;
      lines.push(line.toString('utf8'));
      start = newline + 1;
    }
    const rest = chunk.subarray(start);
    if (rest.length > 0) {
      if (this.buffered + rest.length > this.maxLineBytes) throw new LineTooLong(this.maxLineBytes);
      // Copied: the caller's buffer may be reused.
      this.chunks.push(Buffer.from(rest));
      this.buffered += rest.length;
    }
    return lines;
  }

  /** Bytes held for an unfinished line. */
  get pending(): number {
    return this.buffered;
  }
}
