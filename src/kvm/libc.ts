import * as fs from 'node:fs';
import type { IKoffiLib } from 'koffi';
import { FcRunError } from '../errors';

type Koffi = typeof import('koffi');
type NativeFunction = ReturnType<IKoffiLib['func']>;

/**
 * The libc calls fc-run makes. koffi is the only FFI in the project and this folder the only place
 * that uses it. ioctl is declared non-variadic per argument kind: on x86_64 System V the variadic
 * and fixed calling conventions pass integer and pointer arguments identically.
 *
 * koffi (a native addon, ~25 ms to load) and libc are loaded on first use, so commands that never
 * touch KVM or a socket (validate, plan, schema, help) do not pay for them. The first use binds
 * every function at once, so no binding happens later (after seccomp, on a vCPU's exit path).
 */
const DECLARATIONS = {
  open: ['int open(const char *path, int flags, int mode)'],
  close: ['int close(int fd)'],
  ioctlInt: ['ioctl', 'int', ['int', 'unsigned long', 'unsigned long']],
  ioctlPtr: ['ioctl', 'int', ['int', 'unsigned long', 'void *']],
  mmap: ['void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off)'],
  munmap: ['int munmap(void *addr, size_t len)'],
  madvise: ['int madvise(void *addr, size_t len, int advice)'],
  lseek: ['int64_t lseek(int fd, int64_t off, int whence)'],
  eventfd: ['int eventfd(unsigned int initval, int flags)'],
  write: ['long write(int fd, const void *buf, size_t count)'],
  read: ['long read(int fd, void *buf, size_t count)'],
  syscall3: ['syscall', 'long', ['long', 'long', 'long', 'long']],
  socket: ['int socket(int domain, int type, int protocol)'],
  bind: ['int bind(int fd, const void *addr, unsigned int len)'],
  listen: ['int listen(int fd, int backlog)'],
  accept4: ['int accept4(int fd, void *addr, void *len, int flags)'],
  connect: ['int connect(int fd, const void *addr, unsigned int len)'],
  sendto: ['long sendto(int fd, const void *buf, size_t len, int flags, const void *addr, unsigned int addrlen)'],
  shutdown: ['int shutdown(int fd, int how)'],
  /** memcpy(buf, buf, 0) returns buf: the address of a Buffer's memory. */
  addressOf: ['memcpy', 'uintptr_t', ['void *', 'void *', 'size_t']],
  fcntl: ['int fcntl(int fd, int cmd, int arg)'],
  flock: ['int flock(int fd, int operation)'],
  prctl: ['int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)'],
  /** setpriority(PRIO_PROCESS, 0, n): on Linux, the calling thread's nice value only. */
  setpriority: ['int setpriority(int which, unsigned int who, int prio)'],
  seccompFilter: ['syscall', 'long', ['long', 'unsigned int', 'unsigned int', 'void *']],
  timerfdCreate: ['int timerfd_create(int clockid, int flags)'],
  timerfdSettime: ['int timerfd_settime(int fd, int flags, const void *newValue, void *oldValue)'],
  epollCreate1: ['int epoll_create1(int flags)'],
  epollCtl: ['int epoll_ctl(int epfd, int op, int fd, void *event)'],
  epollWait: ['int epoll_wait(int epfd, void *events, int maxevents, int timeout)'],
  exit: ['void _exit(int status)'],
  pipe2: ['int pipe2(void *fds, int flags)'],
  /** Identity on the address: turns an address (from another thread) back into a koffi pointer. */
  pointerAt: ['memcpy', 'void *', ['uintptr_t', 'uintptr_t', 'size_t']],
} as const;

let koffiLoaded: Koffi | undefined;

/** The koffi module, loaded on first call (see loadKoffi). */
export function koffiModule(): Koffi {
  return (koffiLoaded ??= loadKoffi());
}

/**
 * koffi's own entry (index.js) finds its native addon with a build tool's helpers that load
 * node:https, node:crypto and node:zlib, which costs every thread that loads it (the main thread
 * and each vCPU worker) ~8 ms of CPU and ~4 MiB. fc-run runs on x86_64 and arm64 Linux with glibc
 * (it loads libc.so.6), whose addon is at a fixed place in koffi's package: that is loaded
 * directly when its version is the package's. Anything else (another layout, a mismatch) goes
 * through koffi's entry as before. koffi's entry adds only deprecated aliases on top of the addon.
 *
 * Where npm puts koffi for fc-run (node_modules/koffi in fc-run's package root), the addon is
 * loaded with process.dlopen: no module resolution (resolve and require 2.9 ms against dlopen's
 * 1.1 ms in a process of their own; ~0.4 ms less in a launch, where the loader is warm). Elsewhere
 * (koffi hoisted to a parent node_modules), require finds it.
 */
function loadKoffi(): Koffi {
  /* eslint-disable @typescript-eslint/no-require-imports */
  const arch = process.arch === 'x64' || process.arch === 'arm64' ? process.arch : undefined;
  if (process.platform === 'linux' && arch !== undefined) {
    const addonIn = (dir: string, load: (file: string) => unknown): Koffi | undefined => {
      const pkg = JSON.parse(fs.readFileSync(`${dir}/package.json`, 'latin1')) as { version?: string };
      const addon = load(`${dir}/build/koffi/linux_${arch}/koffi.node`) as Koffi & { version?: string };
      return addon.version !== undefined && addon.version === pkg.version ? addon : undefined;
    };
    try {
      const { PACKAGE_ROOT } = require('../package-root') as typeof import('../package-root');
      const addon = addonIn(`${PACKAGE_ROOT}/node_modules/koffi`, (file) => {
        const m = { exports: {} };
        process.dlopen(m, file);
        return m.exports;
      });
      if (addon) return addon;
    } catch {
      // not there: koffi is elsewhere (found below)
    }
    try {
      const entry = require.resolve('koffi');
      const addon = addonIn(entry.slice(0, entry.lastIndexOf('/')), (file) => require(file));
      if (addon) return addon;
    } catch {
      // not the layout this expects: koffi's own entry below finds the addon or says why not
    }
  }
  return require('koffi') as Koffi;
  /* eslint-enable @typescript-eslint/no-require-imports */
}

export const sys = {} as { readonly [K in keyof typeof DECLARATIONS]: NativeFunction };

function bindAll(): void {
  const libc = koffiModule().load('libc.so.6');
  for (const [name, decl] of Object.entries(DECLARATIONS)) {
    const fn = (libc.func as (...args: unknown[]) => NativeFunction)(...decl);
    Object.defineProperty(sys, name, { value: fn, enumerable: true, writable: false, configurable: false });
  }
}

for (const name of Object.keys(DECLARATIONS)) {
  Object.defineProperty(sys, name, {
    enumerable: true,
    configurable: true,
    get() {
      bindAll();
      return (sys as Record<string, NativeFunction>)[name];
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

export type Pointer = unknown;

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
  return koffiModule().errno();
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

/** Address of a koffi pointer as a bigint, for handing to another thread. */
export function addressOf(ptr: Pointer): bigint {
  return koffiModule().address(ptr) as bigint;
}

/** An ArrayBuffer over native memory (no copy). */
export function viewOf(ptr: Pointer, length: number): ArrayBuffer {
  return koffiModule().view(ptr as never, length) as ArrayBuffer;
}

