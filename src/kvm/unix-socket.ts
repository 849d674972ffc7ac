import * as fs from 'node:fs';
import { EXIT_INVALID_SPEC, FcRunError } from '../errors';
import { AF_UNIX, errno, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, sys, SyscallError } from './libc';

/**
 * Non-blocking Unix stream sockets by raw syscall, for the VMM thread: it waits in epoll_wait,
 * so Node's own event loop (and its net module) never runs there.
 */
function sockaddr(path: string): Buffer {
  const bytes = Buffer.from(path, 'utf8');
  if (bytes.length > 107) throw new SyscallError('sockaddr_un', 36, `socket path is ${bytes.length} bytes, at most 107 fit`);
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  return addr;
}

function newSocket(): number {
  const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new SyscallError('socket(AF_UNIX)', errno());
  return fd;
}

export function listenUnix(path: string): number {
  const fd = newSocket();
  if (sys.bind(fd, sockaddr(path), 110) < 0 || sys.listen(fd, 128) < 0) {
    const e = errno();
    sys.close(fd);
    throw new SyscallError('bind/listen', e, `${path}${e === 98 ? ' is already in use (remove the stale socket file?)' : ''}`);
  }
  return fd;
}

/** Accepts one connection; -1 when none is pending. */
export function acceptUnix(fd: number): number {
  const c = sys.accept4(fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
  return c < 0 ? -1 : c;
}

/** Connects to a listening socket; returns the fd, or the errno (negated) when nobody listens. */
export function connectUnix(path: string): number {
  const fd = newSocket();
  if (sys.connect(fd, sockaddr(path), 110) < 0) {
    const e = errno();
    sys.close(fd);
    return -e;
  }
  return fd;
}

/** Reads what is there: bytes read, 0 at end of stream, -1 when nothing is waiting, -2 on error. */
export function readSome(fd: number, buf: Buffer, len = buf.length): number {
  const n = Number(sys.read(fd, buf, len));
  if (n >= 0) return n;
  return errno() === 11 ? -1 : -2;
}

/** Writes what the socket takes: bytes written (maybe 0), or -2 when the peer is gone. */
export function writeSome(fd: number, buf: Uint8Array): number {
  const n = Number(sys.write(fd, buf, buf.length));
  if (n >= 0) return n;
  return errno() === 11 ? 0 : -2;
}

/** Ends the sending direction (the peer reads end of stream); the socket can still be read. */
export function shutdownWrite(fd: number): void {
  sys.shutdown(fd, 1 /* SHUT_WR */);
}

export function closeFd(fd: number): void {
  sys.close(fd);
}

/**
 * What is at a socket path fc-run is about to create: nothing, a stale socket file (nobody
 * listening: safe to replace), a live socket (another process's: never touched), or something
 * that is not a socket (the user's file: never touched).
 */
export type SocketPathState = 'absent' | 'stale' | 'live' | 'not-socket';

export function socketPathState(path: string): SocketPathState {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return 'absent';
  }
  if (!st.isSocket()) return 'not-socket';
  const fd = connectUnix(path);
  if (fd >= 0) {
    sys.close(fd);
    return 'live';
  }
  // ECONNREFUSED: bound by nobody. EAGAIN: a listener whose backlog is full, so very much alive.
  return -fd === 111 ? 'stale' : 'live';
}

/** Makes way for a socket fc-run will create: removes a stale one, refuses anything else there. */
export function claimSocketPath(path: string, what: string, notSocketExit = EXIT_INVALID_SPEC): void {
  const state = socketPathState(path);
  if (state === 'stale') fs.unlinkSync(path);
  else if (state === 'live') throw new FcRunError('socket-in-use', `${what} ${path} is in use by another process (another VM?): choose another path`);
  else if (state === 'not-socket') throw new FcRunError('socket-path-taken', `${what} ${path} exists and is not a socket; fc-run leaves it alone: choose another path`, notSocketExit);
}
