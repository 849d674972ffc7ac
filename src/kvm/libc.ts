import * as fs from 'node:fs';
import * as path from 'node:path';
import { FcRunError } from '../errors';
import { PACKAGE_ROOT } from '../package-root';

/**
 * fc-run's native addon (native/addon.c, built by `npm run build` into dist/native/fcrun.node):
 * the only way its JavaScript reaches C, and src/kvm/ its only user. It has one function per C
 * call: the libc calls below, the native vCPU threads (src/kvm/vcpu-threads.ts) and the SIGSYS
 * handler (src/kvm/sigsys.ts). Arguments are numbers, bigints, booleans, null, strings (passed as
 * NUL-terminated UTF-8) or buffers and typed arrays (passed as the address of their bytes);
 * results are numbers, pointers bigints (NULL: null). errno is read with {@link errno}.
 *
 * Loaded on first use (~0.2 ms), so commands that never touch KVM or a socket (validate, plan,
 * schema, help) do not load it. It replaced koffi, a general FFI whose load, declarations and
 * binding cost every launch ~4 ms of CPU and its threads more.
 */
export const NATIVE_ADDON = path.join(PACKAGE_ROOT, 'dist', 'native', 'fcrun.node');

// A function of the addon: any arguments of the kinds above, its C function's result.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type NativeFunction = (...args: any[]) => any;

export interface NativeAddon {
  readonly [call: string]: NativeFunction;
  /** errno as the last call on this thread left it. */
  errno(): number;
  /** An ArrayBuffer over `length` bytes of this process's memory at `address`, without a copy. */
  view(address: bigint | number, length: number): ArrayBuffer;
}

let addon: NativeAddon | undefined;

/** The addon, loaded on first call (once per thread; the library itself once per process). */
export function nativeAddon(): NativeAddon {
  if (addon) return addon;
  const m = { exports: {} as NativeAddon };
  try {
    process.dlopen(m, NATIVE_ADDON);
  } catch (err) {
    throw new FcRunError('native-addon', `cannot load ${NATIVE_ADDON} (${(err as Error).message.split('\n')[0]}): build fc-run with "npm run build" (it compiles native/*.c with cc)`);
  }
  return (addon = m.exports);
}

/** The libc calls, by the names fc-run calls them (ioctl twice: with a number, with a buffer). */
const CALLS = {
  open: 'open',
  close: 'close',
  ioctlInt: 'ioctl',
  ioctlPtr: 'ioctl',
  mmap: 'mmap',
  munmap: 'munmap',
  madvise: 'madvise',
  lseek: 'lseek',
  eventfd: 'eventfd',
  write: 'write',
  read: 'read',
  /** syscall(nr, a, b, c). */
  syscall3: 'syscall3',
  socket: 'socket',
  bind: 'bind',
  listen: 'listen',
  accept4: 'accept4',
  connect: 'connect',
  sendto: 'sendto',
  shutdown: 'shutdown',
  /** addressOf(buffer): the address of a buffer's bytes, as a bigint. */
  addressOf: 'addressOf',
  fcntl: 'fcntl',
  flock: 'flock',
  prctl: 'prctl',
  /** setpriority(PRIO_PROCESS, 0, n): on Linux, the calling thread's nice value only. */
  setpriority: 'setpriority',
  /** syscall(SYS_seccomp, op, flags, program). */
  seccompFilter: 'seccompFilter',
  timerfdCreate: 'timerfdCreate',
  timerfdSettime: 'timerfdSettime',
  epollCreate1: 'epollCreate1',
  epollCtl: 'epollCtl',
  epollWait: 'epollWait',
  /** _exit(status). */
  exit: 'exit',
  pipe2: 'pipe2',
  /** pointerAt(address): an address (from another thread) as a pointer. */
  pointerAt: 'pointerAt',
} as const;

export const sys = {} as { readonly [K in keyof typeof CALLS]: NativeFunction };

for (const [name, call] of Object.entries(CALLS)) {
  Object.defineProperty(sys, name, {
    enumerable: true,
    configurable: true,
    get() {
      const fn = nativeAddon()[call];
      Object.defineProperty(sys, name, { value: fn, enumerable: true, writable: false, configurable: false });
      return fn;
    },
  });
}

export const O_RDWR = 0o2;
export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_FAILED = -1n;
export const MADV_DONTFORK = 10;
export const MADV_POPULATE_WRITE = 23;
export const EFD_CLOEXEC = 0o2000000;
export const EPOLL_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLL_CTL_MOD = 3;
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;

/** A C pointer: its address (NULL is null). */
export type Pointer = bigint;

const SYS_gettid = 186;
const SYS_tgkill = 234;

/**
 * Marks every open fd above 2 close-on-exec, so a program this process starts inherits none of
 * them (the jailer: an fd it was given, say a directory, would lead out of the chroot).
 */
export function closeOnExecAll(): void {
  const F_SETFD = 2;
  const FD_CLOEXEC = 1;
  for (const name of fs.readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    if (fd > 2) sys.fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
}

/** Ends the process at once with `status` (libc's `_exit`: no atexit handlers, no thread teardown). */
export function hardExit(status: number): never {
  sys.exit(status);
  throw new Error('_exit returned');
}

/** The calling thread's kernel id. */
export function gettid(): number {
  return Number(sys.syscall3(SYS_gettid, 0, 0, 0));
}

/** Sets the calling thread's nice value (setpriority is per thread on Linux); best effort. */
export function setOwnNice(nice: number): void {
  sys.setpriority(0, 0, nice);
}

/** Sends a signal to one thread of this process. */
export function tgkill(tid: number, signal: number): void {
  sys.syscall3(SYS_tgkill, process.pid, tid, signal);
}

export function errno(): number {
  return nativeAddon().errno();
}

/** "EINVAL (Invalid argument)" for an errno value. */
export function errnoText(code: number): string {
  // node:os only here, on an error's path: a start that plans a spec never loads it.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const os = require('node:os') as typeof import('node:os');
  const name = Object.entries(os.constants.errno).find(([, v]) => v === code)?.[0] ?? `errno ${code}`;
  return `${name} (${describeErrno(code)})`;
}

function describeErrno(code: number): string {
  const texts: Record<number, string> = {
    1: 'Operation not permitted',
    2: 'No such file or directory',
    4: 'Interrupted system call',
    9: 'Bad file descriptor',
    12: 'Cannot allocate memory',
    13: 'Permission denied',
    14: 'Bad address',
    16: 'Device or resource busy',
    17: 'File exists',
    19: 'No such device',
    22: 'Invalid argument',
    24: 'Too many open files',
    25: 'Inappropriate ioctl for device',
    95: 'Operation not supported',
  };
  return texts[code] ?? 'system error';
}

export class SyscallError extends FcRunError {
  constructor(
    readonly call: string,
    readonly errnoValue: number,
    context?: string,
  ) {
    super('syscall', `${call} failed: ${errnoText(errnoValue)}${context ? ` (${context})` : ''}`);
  }
}

/** A pointer's address (0 for NULL), for handing to another thread. */
export function addressOf(ptr: Pointer | null): bigint {
  return ptr ?? 0n;
}

/** An ArrayBuffer over native memory (no copy). */
export function viewOf(ptr: Pointer, length: number): ArrayBuffer {
  return nativeAddon().view(ptr, length);
}

