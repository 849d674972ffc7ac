/**
 * Where the guest's serial console goes: fc-run's stdout, a file or named pipe (`--serial-out`),
 * or nowhere. Whatever it is, it is written without ever blocking: a vCPU (on the main thread in
 * 'main' mode) must not wait on a reader that is slow or gone. What the output does not take at
 * once waits in the UART's transmit buffer (Serial8250.flush), and the guest sees a busy
 * transmitter until there is room.
 */
import * as fs from 'node:fs';
import { FcRunError } from '../errors';
import { nonBlockingDescription } from '../nonblocking';

/**
 * One write that never blocks (given an fd from {@link openSerialOutput}): how many bytes the
 * output took (0 if it is full for now), or -1 if it never will (reader gone, fd closed, disk full).
 */
export function writeSerialOutput(fd: number, bytes: Uint8Array): number {
  try {
    return fs.writeSync(fd, bytes);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EAGAIN' ? 0 : -1;
  }
}

/**
 * The UART's output sink (SerialSinks.out) for `fd` (-1: output discarded, all of it taken),
 * written with {@link writeSerialOutput}; `written` counts what the output took.
 */
export function serialOutputSink(fd: number, written: (n: number) => void): (bytes: Uint8Array) => number {
  return (bytes) => {
    const n = fd >= 0 ? writeSerialOutput(fd, bytes) : bytes.length;
    if (n > 0) written(n);
    return n;
  };
}

/** An opened serial output: its fd (-1: discarded) and whether fc-run opened it (and closes it). */
export interface SerialOutput {
  fd: number;
  owned: boolean;
}

/**
 * Opens the serial output named on the command line: undefined or `-` for stdout, `none` to
 * discard it, else a path.
 *
 * - A pipe (a named one, or /dev/stdout and the like naming an anonymous one) is opened for writing,
 *   non-blocking: a reader that goes away then drops the output (EPIPE) instead of holding it. A
 *   named pipe with no reader yet is opened read-write instead, as Firecracker opens its log
 *   pipes: the open does not wait for a reader, and output waits (EAGAIN) until one reads.
 * - Any other path is opened for appending (created if missing), non-blocking.
 * - stdout: see nonBlockingDescription (src/nonblocking.ts).
 */
export function openSerialOutput(arg: string | undefined): SerialOutput {
  if (arg === 'none') return { fd: -1, owned: false };
  if (arg !== undefined && arg !== '-') {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(arg, { throwIfNoEntry: false });
    } catch {
      st = undefined; // the open below says why
    }
    // A socket cannot be opened by its path: /dev/stdout or /proc/self/fd/2 naming a socket
    // stdout or stderr (a child's stdio in Node, journald's stream) is written through that fd.
    if (st?.isSocket()) {
      const std = [1, 2].find((fd) => sameSocket(fd, st));
      if (std === undefined) throw new FcRunError('serial-out', `cannot open --serial-out ${arg}: a socket (fc-run writes to a regular file, a named pipe, a character device, or its own stdout or stderr)`);
      return { fd: nonBlockingDescription(std), owned: false };
    }
    try {
      const fd = openPath(arg, st?.isFIFO() ?? false);
      const opened = fs.fstatSync(fd);
      if (opened.isDirectory() || opened.isSocket() || opened.isBlockDevice()) {
        fs.closeSync(fd);
        throw new FcRunError('serial-out', `cannot open --serial-out ${arg}: not a regular file, named pipe or character device`);
      }
      return { fd, owned: true };
    } catch (err) {
      if (err instanceof FcRunError) throw err;
      throw new FcRunError('serial-out', `cannot open --serial-out ${arg}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  const fd = nonBlockingDescription(1);
  return fd < 0 ? { fd: -1, owned: false } : { fd, owned: fd !== 1 };
}

/** Whether `fd` is open on the socket `st` describes. */
function sameSocket(fd: number, st: fs.Stats): boolean {
  try {
    const s = fs.fstatSync(fd);
    return s.isSocket() && s.dev === st.dev && s.ino === st.ino;
  } catch {
    return false; // not open
  }
}

function openPath(file: string, fifo: boolean): number {
  const C = fs.constants;
  if (!fifo) {
    return fs.openSync(file, C.O_WRONLY | C.O_CREAT | C.O_APPEND | C.O_NOCTTY | C.O_NONBLOCK, 0o600);
  }
  try {
    return fs.openSync(file, C.O_WRONLY | C.O_NONBLOCK);
  } catch (err) {
    // ENXIO: a named pipe nobody reads yet; held open for reading too, so the open succeeds.
    if ((err as NodeJS.ErrnoException).code === 'ENXIO') return fs.openSync(file, C.O_RDWR | C.O_NONBLOCK);
    throw err;
  }
}
