/**
 * Output sinks for the log and the metrics: a regular file or a named pipe (FIFO), opened
 * non-blocking, written with one `write(2)` per line and never waited on.
 *
 * The fd returned by {@link openSink} is a plain process-wide file descriptor: pass the number to
 * worker threads (through `workerData`) and every thread can write to it.
 */
import * as fs from 'node:fs';
import { FcRunError } from '../errors';

/**
 * Linux `PIPE_BUF`: a `write(2)` of at most this many bytes to a pipe is atomic (all or nothing,
 * never interleaved with another writer's bytes). Log lines are cut to fit in it.
 */
export const PIPE_BUF = 4096;

/** What kind of file {@link openSink} opened. */
export type SinkKind = 'file' | 'fifo' | 'char-device';

/** An opened sink: the fd number and what it is. */
export interface Sink {
  fd: number;
  kind: SinkKind;
}

/** Mode of a log or metrics file that {@link openSink} creates (before the umask). */
export const SINK_FILE_MODE = 0o600;

/**
 * Opens `path` for writing without ever blocking, and returns the fd number.
 *
 * - An existing named pipe (FIFO) is opened `O_RDWR | O_NONBLOCK`, as Firecracker does: holding the
 *   read end too means the open succeeds when no reader is there yet, the writes never fail with
 *   `EPIPE`/`SIGPIPE` when a reader goes away, and a full pipe gives `EAGAIN` instead of blocking.
 * - Anything else is opened as a regular file, `O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK`, mode
 *   {@link SINK_FILE_MODE}: created if missing, appended to otherwise. `O_APPEND` keeps lines that
 *   several threads write through the same fd from overwriting each other.
 * - A character device (such as `/dev/null`) is accepted too; directories, sockets and block
 *   devices are refused.
 *
 * The fd is opened close-on-exec (Node always does). The caller owns it and closes it with
 * `fs.closeSync` once nothing writes to it any more.
 *
 * @param path file or FIFO path (already resolved by the caller)
 * @param what what the sink is for, used in error messages (`"log"`, `"metrics"`)
 * @throws FcRunError (code `monitor-open`) naming the path and the errno text, e.g.
 *   `cannot open log file /x/y.log: no such file or directory (ENOENT)`
 */
export function openSink(path: string, what = 'log'): number {
  return openSinkInfo(path, what).fd;
}

/** {@link openSink}, also telling what kind of file was opened. */
export function openSinkInfo(path: string, what = 'log'): Sink {
  const C = fs.constants;
  let isFifo = false;
  try {
    isFifo = fs.statSync(path, { throwIfNoEntry: false })?.isFIFO() ?? false;
  } catch (e) {
    throw openError(path, what, e);
  }
  const flags = isFifo ? C.O_RDWR | C.O_NONBLOCK : C.O_WRONLY | C.O_CREAT | C.O_APPEND | C.O_NONBLOCK;
  let fd: number;
  try {
    fd = fs.openSync(path, flags, SINK_FILE_MODE);
  } catch (e) {
    throw openError(path, what, e);
  }
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    throw openError(path, what, e);
  }
  const kind: SinkKind | undefined = st.isFIFO() ? 'fifo' : st.isFile() ? 'file' : st.isCharacterDevice() ? 'char-device' : undefined;
  if (kind === undefined) {
    fs.closeSync(fd);
    throw new FcRunError('monitor-open', `cannot open ${what} file ${path}: not a regular file or named pipe`);
  }
  return { fd, kind };
}

function openError(path: string, what: string, e: unknown): FcRunError {
  const err = e as NodeJS.ErrnoException;
  // Node's messages read "ENOENT: no such file or directory, open '/x'": keep the errno text.
  const text = /^[A-Z0-9]+: ([^,]+)/.exec(err.message ?? '')?.[1] ?? String(err.message ?? e);
  const code = err.code ? ` (${err.code})` : '';
  return new FcRunError('monitor-open', `cannot open ${what} file ${path}: ${text}${code}`);
}

/**
 * One non-blocking `write(2)` of `buf[0, len)` to `fd`. Returns the number of bytes written, or -1
 * if the write failed for any reason (`EAGAIN` on a full pipe, `EBADF` on a closed fd, `ENOSPC`,
 * ...). Never throws and never blocks (given a non-blocking fd).
 *
 * `fs.writeSync` makes one `write(2)` call unless the kernel writes only part of the buffer, in
 * which case libuv tries once more for the rest (that second call fails with `EAGAIN` on a full
 * pipe); writes of at most {@link PIPE_BUF} bytes to a pipe are never partial.
 */
export function writeOnce(fd: number, buf: Uint8Array, len: number = buf.length): number {
  try {
    return fs.writeSync(fd, buf, 0, len);
  } catch {
    return -1;
  }
}
