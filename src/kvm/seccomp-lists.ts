import { KVM } from './ioctls';
import { EACCES, ENOSYS } from './seccomp-actions';

/**
 * fc-run's seccomp allow-lists: the system calls each of its threads may make once the microVM
 * runs, one row per call with the reason it is there. Anything else is trapped: fc-run's SIGSYS
 * handler names the call and the process dies of SIGSYS (src/kvm/seccomp.ts builds the BPF).
 *
 * Threads (Firecracker's categories):
 *   api   Node's main thread: CLI, API server, terminal input, signals, pause/resume, snapshots,
 *         SIGQUIT register dumps and, with native vCPU threads, every vCPU exit.
 *   vmm   the VMM worker: the device models around one epoll loop.
 *   vcpu  each vCPU thread: a worker running the KVM_RUN loop, or a native thread (KVM_RUN only).
 * The process-wide filter, installed on every thread at once, allows the union of the three plus
 * what Node's own helper threads need (libuv's thread pool, V8's platform threads: garbage
 * collection and compilation), which get no filter of their own. Filters stack: a call must pass
 * both the process-wide filter and its thread's.
 *
 * Where the lists come from: `strace -f` on every integration scenario (scripts/seccomp-trace.js
 * reads such traces and prints, per thread category, the calls made after each filter), plus the
 * calls V8, libuv and glibc make on rarer paths (memory pressure, a loaded machine), which are
 * allowed everywhere because refusing them would kill fc-run at random. The strict part is the
 * dangerous classes: no exec, no process creation, no ptrace, no namespaces, no mount, no network
 * sockets, ioctl only with the requests listed below, and no opening of files except on the main
 * thread (snapshots, by request of the API, open the files they write).
 *
 * Tested with the Node majors in SECCOMP_LISTS_NODE_MAJORS; on another major fc-run warns and
 * uses its deny list instead (src/kvm/seccomp.ts), since another V8 or libuv may make other calls.
 */
export const SECCOMP_LISTS_NODE_MAJORS: readonly number[] = [20];

export type ThreadCategory = 'api' | 'vmm' | 'vcpu';
/** `helpers`: only the process-wide filter (Node's helper threads have no filter of their own). */
export type Where = readonly ThreadCategory[] | 'all' | 'helpers';

/** One condition on an argument (low 32 bits unless `qword`): value equal, or (arg & mask) == val. */
export interface ArgTest {
  index: number;
  /** 'pid': fc-run's own process id, known when the filter is built. */
  val: number | 'pid';
  mask?: number;
  qword?: boolean;
}

export interface AllowedCall {
  call: string;
  why: string;
  where: Where;
  /** Alternatives: the call passes when all tests of one of them hold. None: any arguments. */
  args?: readonly (readonly ArgTest[])[];
}

const ALL = 'all' as const;
const API = ['api'] as const;
const VMM = ['vmm'] as const;
const API_VMM = ['api', 'vmm'] as const;
const HELPERS = 'helpers' as const;

const CLONE_THREAD = 0x10000;
/** CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME, and CLONE_VFORK/PTRACE. */
const CLONE_FORBIDDEN = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080 | 0x00004000 | 0x00002000;
const AF_UNIX = 1;
const PR = { SET_NAME: 15, GET_NAME: 16, SET_NO_NEW_PRIVS: 38, SET_VMA: 0x53564d41, GET_DUMPABLE: 3 };
const SECCOMP_SET_MODE_FILTER = 1;

const one = (...tests: ArgTest[]) => [tests];
const eachOf = (index: number, values: readonly number[]) => values.map((val) => [{ index, val }]);

/**
 * The ioctl requests fc-run makes once it runs, per thread. Everything else ioctl could do
 * (another KVM request, a terminal's TIOCSTI, a TAP's TUNSETIFF, ...) is trapped.
 */
export const ALLOWED_IOCTLS: readonly { name: string; request: number; where: Where; why: string }[] = [
  { name: 'KVM_RUN', request: KVM.RUN, where: ['api', 'vcpu'], why: 'enter the guest (api: nothing; listed for a vCPU worker started by the main thread after its filter)' },
  { name: 'KVM_IRQ_LINE', request: KVM.IRQ_LINE, where: ['api', 'vcpu', 'vmm'], why: 'raise and lower the serial and i8042 interrupt lines' },
  { name: 'KVM_GET_REGS', request: KVM.GET_REGS, where: ['api', 'vcpu'], why: 'register dumps (SIGQUIT, a fatal exit) and snapshots' },
  { name: 'KVM_GET_SREGS', request: KVM.GET_SREGS, where: ['api', 'vcpu'], why: 'register dumps and snapshots' },
  { name: 'KVM_GET_MSRS', request: KVM.GET_MSRS, where: ['api', 'vcpu'], why: 'snapshots: the vCPU MSRs' },
  { name: 'KVM_GET_FPU', request: KVM.GET_FPU, where: ['api', 'vcpu'], why: 'snapshots' },
  { name: 'KVM_GET_LAPIC', request: KVM.GET_LAPIC, where: ['api', 'vcpu'], why: 'snapshots' },
  { name: 'KVM_GET_MP_STATE', request: KVM.GET_MP_STATE, where: ['api', 'vcpu'], why: 'snapshots' },
  { name: 'KVM_GET_CPUID2', request: KVM.GET_CPUID2, where: ['api', 'vcpu'], why: 'snapshots' },
  { name: 'KVM_GET_VCPU_EVENTS', request: KVM.GET_VCPU_EVENTS, where: ['api', 'vcpu'], why: 'snapshots' },
  { name: 'KVM_GET_DEBUGREGS', request: KVM.GET_DEBUGREGS, where: ['api', 'vcpu'], why: 'snapshots' },
  { name: 'KVM_GET_XSAVE', request: KVM.GET_XSAVE, where: ['api', 'vcpu'], why: 'snapshots' },
  { name: 'KVM_GET_XSAVE2', request: KVM.GET_XSAVE2, where: ['api', 'vcpu'], why: 'snapshots' },
  { name: 'KVM_GET_XCRS', request: KVM.GET_XCRS, where: ['api', 'vcpu'], why: 'snapshots' },
  { name: 'KVM_GET_TSC_KHZ', request: KVM.GET_TSC_KHZ, where: ['api', 'vcpu'], why: 'snapshots: the TSC frequency' },
  { name: 'KVM_GET_CLOCK', request: KVM.GET_CLOCK, where: API, why: 'snapshots: kvm-clock' },
  { name: 'KVM_GET_IRQCHIP', request: KVM.GET_IRQCHIP, where: API, why: 'snapshots: PIC and IOAPIC' },
  { name: 'KVM_GET_PIT2', request: KVM.GET_PIT2, where: API, why: 'snapshots: the PIT' },
  { name: 'KVM_GET_DIRTY_LOG', request: KVM.GET_DIRTY_LOG, where: API, why: 'Diff snapshots: pages written since the last one' },
  { name: 'KVM_CHECK_EXTENSION', request: KVM.CHECK_EXTENSION, where: API, why: 'snapshots: what the host KVM can save' },
  { name: 'TUNSETOFFLOAD', request: 0x400454d0, where: VMM, why: "a TAP's offloads, set when the guest activates its net device" },
  { name: 'TCGETS', request: 0x5401, where: API, why: 'the terminal: raw mode for serial input (libuv)' },
  { name: 'TCSETS', request: 0x5402, where: ALL, why: 'the terminal: back out of raw mode when fc-run ends, or dies of SIGSYS on any thread (native/sigsys.c)' },
  { name: 'TCSETSW', request: 0x5403, where: API, why: 'the terminal (libuv uv_tty_set_mode)' },
  { name: 'TIOCGPTN', request: 0x80045430, where: API, why: 'libuv asking whether a terminal is a pty (uv_tty_init: process.stderr made on first use)' },
  { name: 'TIOCGWINSZ', request: 0x5413, where: API, why: 'the terminal size (libuv, Node streams)' },
  { name: 'FIONBIO', request: 0x5421, where: ALL, why: 'libuv makes each new fd non-blocking with it' },
  { name: 'FIOCLEX', request: 0x5451, where: ALL, why: 'libuv marks new fds close-on-exec with it' },
  { name: 'FIONREAD', request: 0x541b, where: API_VMM, why: 'bytes waiting on a socket or pipe' },
];

const THREAD_CLONE = one({ index: 0, mask: CLONE_THREAD | CLONE_FORBIDDEN, val: CLONE_THREAD });

/** Calls every thread makes: V8 (memory, its compiler and collector), libuv's loop, glibc. */
const RUNTIME: AllowedCall[] = [
  { call: 'read', why: 'fds: eventfds, pipes, sockets, TAPs, files', where: ALL },
  { call: 'write', why: 'fds: eventfds, serial output, logs, metrics, sockets, TAPs', where: ALL },
  { call: 'close', why: 'fds that end (connections, pipes)', where: ALL },
  { call: 'futex', why: 'locks, condition variables, Atomics.wait', where: ALL },
  { call: 'mmap', why: "V8's heap and code space, glibc's malloc", where: ALL },
  { call: 'munmap', why: "V8's heap, glibc's malloc", where: ALL },
  { call: 'mprotect', why: "V8's code space (write/execute flips), guard pages", where: ALL },
  { call: 'pkey_mprotect', why: "V8's code space with memory protection keys", where: ALL },
  { call: 'madvise', why: "V8 and glibc giving memory back", where: ALL },
  { call: 'mremap', why: "glibc's realloc of large blocks", where: ALL },
  { call: 'brk', why: "glibc's malloc", where: ALL },
  { call: 'rt_sigaction', why: "signal handlers (Node's, libuv's, fc-run's SIGSYS handler putting itself back)", where: ALL },
  { call: 'rt_sigprocmask', why: 'signal masks (libuv, glibc around thread exit, the SIGSYS handler)', where: ALL },
  { call: 'rt_sigreturn', why: 'return from a signal handler (the vCPU kick, SIGQUIT, SIGTERM)', where: ALL },
  { call: 'sigaltstack', why: 'glibc and V8 at thread start and end', where: ALL },
  { call: 'restart_syscall', why: 'the kernel restarting a call a signal interrupted', where: ALL },
  { call: 'gettid', why: 'thread ids (V8, glibc, the SIGSYS handler)', where: ALL },
  { call: 'getpid', why: 'glibc, Node (process.pid), the SIGSYS handler', where: ALL },
  { call: 'tgkill', why: 'a signal to one of its own threads (the vCPU kick, the SIGSYS handler re-raising)', where: ALL, args: [[{ index: 0, val: 'pid' }]] },
  { call: 'kill', why: "a signal to fc-run itself only (bin/fc-run re-raising SIGTERM as PID 1 of the jail's namespace)", where: ALL, args: [[{ index: 0, val: 'pid' }]] },
  { call: 'exit', why: 'a thread ends', where: ALL },
  { call: 'exit_group', why: 'the process ends', where: ALL },
  { call: 'clock_gettime', why: 'time, where the vDSO is not used', where: ALL },
  { call: 'clock_getres', why: 'timer resolution (V8)', where: ALL },
  { call: 'gettimeofday', why: 'time, where the vDSO is not used', where: ALL },
  { call: 'clock_nanosleep', why: 'V8 and libuv sleeping briefly', where: ALL },
  { call: 'nanosleep', why: 'V8 and libuv sleeping briefly', where: ALL },
  { call: 'sched_yield', why: "V8's spinning locks under contention", where: ALL },
  { call: 'sched_getaffinity', why: 'V8 and libuv counting usable CPUs', where: ALL },
  { call: 'getrandom', why: "V8's hash seeds and Math.random, crypto", where: ALL },
  { call: 'fstat', why: 'glibc and Node inspecting an fd', where: ALL },
  { call: 'newfstatat', why: 'glibc fstat on newer glibc; Node fs.statSync of an open path', where: ALL },
  { call: 'statx', why: 'Node fs.stat and fs.fstat', where: ALL },
  { call: 'lseek', why: 'file positions (block device, snapshot files)', where: ALL },
  { call: 'fcntl', why: 'fd flags (libuv: O_NONBLOCK, FD_CLOEXEC)', where: ALL },
  { call: 'poll', why: "the watcher of a vCPU on the main thread ('main' mode), waiting on the event loop's epoll fd", where: API },
  { call: 'epoll_wait', why: "each thread's event loop (libuv's, the VMM thread's own)", where: ALL },
  { call: 'epoll_pwait', why: "each thread's event loop (libuv)", where: ALL },
  { call: 'epoll_ctl', why: 'fds coming and going in an event loop', where: ALL },
  { call: 'set_robust_list', why: 'glibc at thread start', where: ALL },
  { call: 'rseq', why: 'glibc at thread start', where: ALL },
  { call: 'getrusage', why: "V8's and Node's CPU time (process.cpuUsage, heap statistics)", where: ALL },
  { call: 'uname', why: 'Node os.release and V8 at start of an isolate', where: ALL },
  { call: 'getcwd', why: 'Node path.resolve', where: ALL },
  { call: 'readlink', why: 'Node resolving paths (fs.realpath)', where: ALL },
  {
    call: 'prctl',
    why: 'thread names (V8, libuv), naming memory areas (V8), no_new_privs before a thread filter',
    where: ALL,
    args: eachOf(0, [PR.SET_NAME, PR.GET_NAME, PR.SET_VMA, PR.SET_NO_NEW_PRIVS, PR.GET_DUMPABLE]),
  },
  { call: 'seccomp', why: 'a thread installing its own, stricter, filter on top', where: ALL, args: one({ index: 0, val: SECCOMP_SET_MODE_FILTER }) },
  { call: 'membarrier', why: 'V8 flushing code on other threads', where: ALL },
  { call: 'getuid', why: 'Node os.userInfo, libuv', where: ALL },
  { call: 'geteuid', why: 'Node, libuv', where: ALL },
  { call: 'getgid', why: 'Node, libuv', where: ALL },
  { call: 'getegid', why: 'Node, libuv', where: ALL },
  { call: 'capget', why: 'Node checking its capabilities at start of a worker', where: ALL },
];

/** What the devices, the API and the monitor do, per thread. */
const FC_RUN: AllowedCall[] = [
  { call: 'ioctl', why: 'KVM, terminal and socket requests: the list in ALLOWED_IOCTLS', where: ALL },
  { call: 'pread64', why: 'block device reads, snapshot memory', where: ALL },
  { call: 'pwrite64', why: 'block device writes, snapshot memory', where: ALL },
  { call: 'readv', why: 'libuv and Node reading sockets, TAP frames', where: ALL },
  { call: 'writev', why: 'libuv and Node writing sockets and files, TAP frames', where: ALL },
  { call: 'fsync', why: 'block flush (cache_type Writeback), snapshot files', where: ALL },
  { call: 'fdatasync', why: 'block flush', where: ALL },
  { call: 'eventfd2', why: 'libuv async handles', where: ALL },
  { call: 'pipe2', why: 'libuv signal watchers and child stdio', where: API },
  { call: 'dup', why: 'libuv duplicating an fd (stdio streams)', where: API },
  { call: 'dup3', why: 'libuv duplicating an fd (stdio streams)', where: API },
  { call: 'timerfd_create', why: 'a rate limiter arming a timer', where: VMM },
  { call: 'timerfd_settime', why: 'rate limiter timers', where: VMM },
  { call: 'timerfd_gettime', why: 'rate limiter timers', where: VMM },
  { call: 'socket', why: 'Unix sockets only: vsock connections to host listeners, the API', where: API_VMM, args: [[{ index: 0, val: AF_UNIX }]] },
  { call: 'connect', why: 'vsock: a guest reaching a host listener on <uds_path>_P; sd_notify', where: API_VMM },
  { call: 'accept4', why: 'the API socket, the vsock socket', where: API_VMM },
  { call: 'recvfrom', why: 'sockets', where: API_VMM },
  { call: 'recvmsg', why: 'sockets', where: API_VMM },
  { call: 'sendto', why: 'sockets, sd_notify', where: API_VMM },
  { call: 'sendmsg', why: 'sockets', where: API_VMM },
  { call: 'shutdown', why: 'vsock half-close, the API closing a connection', where: API_VMM },
  { call: 'getsockopt', why: 'Node checking a socket (SO_ERROR after connect)', where: API_VMM },
  { call: 'setsockopt', why: 'Node on new connections', where: API_VMM },
  { call: 'getsockname', why: 'Node on new connections', where: API_VMM },
  { call: 'getpeername', why: 'Node on new connections', where: API_VMM },
  {
    call: 'openat',
    why: 'snapshots (the files they write and the memory file), the logger and metrics reopened by the API',
    where: API,
  },
  { call: 'access', why: 'snapshots: whether a file is there (fs.existsSync)', where: API },
  { call: 'ftruncate', why: 'snapshot memory files', where: API },
  { call: 'fallocate', why: 'snapshot memory files', where: API },
  { call: 'rename', why: 'snapshot files written whole then renamed', where: API },
  { call: 'link', why: 'a snapshot over an existing one: the old memory file kept (a hard link) until the new pair is in place', where: API },
  { call: 'unlink', why: 'the API socket when fc-run ends; a snapshot file that failed', where: API },
  { call: 'clone', why: 'threads only (CLONE_THREAD), in the same namespaces: native vCPU threads, Node starting a thread late', where: API, args: THREAD_CLONE },
  { call: 'setpriority', why: 'a native vCPU thread lowering its own priority (nice 10) as it starts', where: API, args: one({ index: 0, val: 0 }, { index: 1, val: 0 }) },
  { call: 'clone', why: 'threads only: libuv growing its pool', where: HELPERS, args: THREAD_CLONE },
];

export const ALLOWED_CALLS: readonly AllowedCall[] = [...RUNTIME, ...FC_RUN];

/**
 * Calls answered with an error instead of being trapped: the C library then uses another call, or
 * the runtime, which tries it on a rarer path of a thread that never needs it, copes with the
 * failure. A row for 'all' is in the process-wide filter too; one for some threads only in theirs.
 */
export const ERRNO_CALLS: readonly { call: string; errno: number; where: Where; why: string }[] = [
  { call: 'clone3', errno: ENOSYS, where: ALL, why: 'its flags are in memory a filter cannot read; glibc falls back to clone' },
  { call: 'io_uring_setup', errno: ENOSYS, where: ALL, why: 'a ring would make calls the filter never sees; libuv falls back to epoll' },
  { call: 'io_uring_enter', errno: ENOSYS, where: ALL, why: 'as io_uring_setup' },
  { call: 'io_uring_register', errno: ENOSYS, where: ALL, why: 'as io_uring_setup' },
  {
    call: 'openat',
    errno: EACCES,
    where: ['vmm', 'vcpu'],
    why: 'a device model or vCPU loop opens no file, but glibc and V8 may read a /sys or /proc file on a rarer path (seen once on a vCPU worker during a Diff snapshot run, O_RDONLY|O_CLOEXEC, as glibc counts CPUs) and take a failure in their stride: fails instead of killing fc-run',
  },
];
