import * as fs from 'node:fs';
import { isTerminal } from '../terminal';

/** Where a command writes: a file descriptor (FdOutput) or, in tests, any stream-like object. */
export interface Output {
  /** Writes all of `data`; false when the reader has gone (FdOutput) or, for a stream, to ask for backpressure. */
  write(data: string | Uint8Array): boolean;
  readonly isTTY?: boolean;
  /** Writes from now on without blocking (FdOutput.nonBlocking). */
  nonBlocking?(): void;
}

/** How long a full, non-blocking output may take nothing before fc-run stops writing to it. */
const STALLED_MS = 5000;

/**
 * Standard output or error as a file descriptor written synchronously. fc-run's commands print a
 * few lines and end; building process.stdout (a stream, and the net/stream/tty modules behind it)
 * costs a few milliseconds of every start, and on Linux its writes are synchronous anyway.
 * A reader that has gone (EPIPE, `fc-run schema | head -1`) ends the output silently; a
 * non-blocking descriptor that is full is waited on, for as long as its reader takes some at least
 * every {@link STALLED_MS} (a reader that stopped would otherwise hold fc-run forever).
 */
export class FdOutput implements Output {
  private gone = false;
  private tty: boolean | undefined;

  constructor(public fd: number) {}

  /**
   * From now on, writes through a non-blocking description of the same file (a long-running
   * command: a reader that stopped must not hold it forever, see nonBlockingDescription).
   */
  nonBlocking(): void {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const fd = (require('../nonblocking') as typeof import('../nonblocking')).nonBlockingDescription(this.fd);
    if (fd >= 0) this.fd = fd;
  }

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
    let progress = Date.now();
    for (let off = 0; off < bytes.length; ) {
      try {
        off += fs.writeSync(this.fd, bytes, off);
        progress = Date.now();
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' && Date.now() - progress < STALLED_MS) {
          // A non-blocking descriptor (a pipe set so by another process) that is full: wait and go on.
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
          continue;
        }
        // EPIPE (the reader has gone), EBADF (the descriptor was closed), a reader that stopped:
        // nothing more is written.
        this.gone = true;
        return false;
      }
    }
    return true;
  }
}
