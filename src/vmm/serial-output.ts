/**
 * Where the guest's serial console goes: fc-run's stdout, a file or named pipe (`--serial-out`),
 * or nowhere. Whatever it is, it is written without ever blocking: a vCPU (on the main thread in
 * 'main' mode) must not wait on a reader that is slow or gone. What the output does not take at
 * once waits in the UART's transmit buffer (Serial8250.flush), and the guest sees a busy
 * transmitter until there is room.
 */
import * as fs from 'node:fs';
import { FcRunError } from '../errors';

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

/** An opened serial output: its fd (-1: discarded) and whether fc-run opened it (and closes it). */
export interface SerialOutput {
  fd: number;
  owned: boolean;
}

/**
 * Opens the serial output named on the command line: undefined or `-` for stdout, `none` to
 * discard it, else a path.
 *
 * - A path that is a named pipe is opened read-write and non-blocking, as Firecracker opens its
 *   log pipes: the open does not wait for a reader, and output waits (EAGAIN) while none reads.
 * - Any other path is opened for appending (created if missing), non-blocking.
 * - stdout, when a pipe, socket or terminal, is opened again through /proc (a file description of
 *   fc-run's own, non-blocking, so the shell's or a parent's is not changed); where that is not
 *   possible (a socket, no /proc), stdout itself is made non-blocking, as Node does for its own
 *   stdout. A regular file is written as it is (it never blocks).
 */
export function openSerialOutput(arg: string | undefined): SerialOutput {
  const C = fs.constants;
  if (arg === 'none') return { fd: -1, owned: false };
  if (arg !== undefined && arg !== '-') {
    let fifo = false;
    try {
      fifo = fs.statSync(arg, { throwIfNoEntry: false })?.isFIFO() ?? false;
      const flags = fifo ? C.O_RDWR | C.O_NONBLOCK : C.O_WRONLY | C.O_CREAT | C.O_APPEND | C.O_NOCTTY | C.O_NONBLOCK;
      const fd = fs.openSync(arg, flags, 0o600);
      const st = fs.fstatSync(fd);
      if (st.isDirectory() || st.isSocket() || st.isBlockDevice()) {
        fs.closeSync(fd);
        throw new FcRunError('serial-out', `cannot open --serial-out ${arg}: not a regular file, named pipe or character device`);
      }
      return { fd, owned: true };
    } catch (err) {
      if (err instanceof FcRunError) throw err;
      throw new FcRunError('serial-out', `cannot open --serial-out ${arg}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  let st: fs.Stats;
  try {
    st = fs.fstatSync(1);
  } catch {
    return { fd: -1, owned: false }; // no stdout at all: nothing can be shown
  }
  if (st.isFile() || st.isBlockDevice()) return { fd: 1, owned: false };
  if (!st.isSocket()) {
    try {
      return { fd: fs.openSync('/proc/self/fd/1', C.O_WRONLY | C.O_NOCTTY | C.O_NONBLOCK), owned: true };
    } catch {
      // no /proc (a jail), or a pipe whose reader is gone already: stdout itself, below
    }
  }
  setNonBlocking(1);
  return { fd: 1, owned: false };
}

function setNonBlocking(fd: number): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { sys, F_GETFL, F_SETFL, O_NONBLOCK } = require('../kvm/libc') as typeof import('../kvm/libc');
  const flags = sys.fcntl(fd, F_GETFL, 0);
  if (flags >= 0) sys.fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}
