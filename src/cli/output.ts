import * as fs from 'node:fs';
import { isTerminal } from '../terminal';

/** Where a command writes: a file descriptor (FdOutput) or, in tests, any stream-like object. */
export interface Output {
  /** Writes all of `data`; false when the reader has gone (FdOutput) or, for a stream, to ask for backpressure. */
  write(data: string | Uint8Array): boolean;
  readonly isTTY?: boolean;
}

/**
 * Standard output or error as a file descriptor written synchronously. fc-run's commands print a
 * few lines and end; building process.stdout (a stream, and the net/stream/tty modules behind it)
 * costs a few milliseconds of every start, and on Linux its writes are synchronous anyway.
 * A reader that has gone (EPIPE, `fc-run schema | head -1`) ends the output silently; a
 * non-blocking descriptor that is full is waited on.
 */
export class FdOutput implements Output {
  private gone = false;
  private tty: boolean | undefined;

  constructor(readonly fd: number) {}

  get isTTY(): boolean {
    return (this.tty ??= isTerminal(this.fd));
  }

  /** False once the reader has gone: nothing more will be written. */
  get open(): boolean {
    return !this.gone;
  }

  write(data: string | Uint8Array): boolean {
    if (this.gone) return false;
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    for (let off = 0; off < bytes.length; ) {
      try {
        off += fs.writeSync(this.fd, bytes, off);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN') {
          // A non-blocking descriptor (a pipe set so by another process) that is full: wait and go on.
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
          continue;
        }
        // EPIPE (the reader has gone), EBADF (the descriptor was closed): nothing can be written.
        this.gone = true;
        return false;
      }
    }
    return true;
  }
}
