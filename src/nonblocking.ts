/**
 * Writing to a standard descriptor without ever blocking, and without changing it for the other
 * processes that share it (the shell, a pipeline, a supervisor's socket).
 */
import * as fs from 'node:fs';

/**
 * A descriptor that writes where `fd` does, without blocking:
 * - a pipe, FIFO or terminal is opened again through /proc: a file description of fc-run's own,
 *   non-blocking (the one the parent gave stays as it was);
 * - where that is not possible (a socket, no /proc in a jail, a pipe whose reader is gone), `fd`
 *   itself is made non-blocking, as Node does for its own stdout, and put back as it was when
 *   fc-run exits;
 * - a regular file or block device is `fd` as it is (writes to it never wait for a reader).
 * -1 if `fd` is not open.
 */
export function nonBlockingDescription(fd: number): number {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch {
    return -1;
  }
  if (st.isFile() || st.isBlockDevice()) return fd;
  if (!st.isSocket()) {
    try {
      const C = fs.constants;
      return fs.openSync(`/proc/self/fd/${fd}`, C.O_WRONLY | C.O_NOCTTY | C.O_NONBLOCK);
    } catch {
      // below
    }
  }
  setNonBlocking(fd);
  return fd;
}

/**
 * Makes `fd` non-blocking, shared as its file description is with whoever else holds it, and puts
 * its flags back when fc-run exits.
 */
function setNonBlocking(fd: number): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { sys, F_GETFL, F_SETFL, O_NONBLOCK } = require('./kvm/libc') as typeof import('./kvm/libc');
  const flags = sys.fcntl(fd, F_GETFL, 0) as number;
  if (flags < 0 || flags & O_NONBLOCK) return;
  if (sys.fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return;
  process.once('exit', () => sys.fcntl(fd, F_SETFL, flags));
}
