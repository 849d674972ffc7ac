import { errno, sys, SyscallError } from './libc';
import { ENOSYS, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS } from './seccomp-actions';

/**
 * fc-run's seccomp filters for the running VMM. Two kinds:
 *
 * - The allow-lists (the default): src/kvm/seccomp-lists.ts, compiled by builtinFilters
 *   (src/kvm/seccomp-builtin.ts, kept apart so that the threads' bundles do not carry the compiler)
 *   into one process-wide program (every thread, installed at once with TSYNC) and one stricter
 *   program per thread category (api, vmm, vcpu) that each thread installs on top. A call not on
 *   a list is trapped (SECCOMP_RET_TRAP): fc-run's SIGSYS handler (native/sigsys.c) names it on
 *   stderr and the process dies of SIGSYS.
 * - The deny list ({@link buildFilter}): what an attacker who took over the process would want —
 *   start programs, create processes, trace other processes, mount, load kernel code or BPF,
 *   change identity or namespaces, open network sockets, change the clock. It is the process-wide
 *   filter when the allow-lists do not apply: under --seccomp-filter FILE (whose per-thread filters
 *   replace the built-in ones, and which no list of Firecracker's covers Node's helper threads
 *   with), and on a Node major the lists were not made for.
 *
 * Neither can make a process running as root harmless (it can still open /proc/<pid>/mem, say):
 * that is the jailer's part (an unprivileged user in a chroot). x86_64 only.
 */

/** x86_64 system call numbers refused outright. */
export const DENIED_SYSCALLS: Readonly<Record<string, number>> = {
  fork: 57,
  vfork: 58,
  execve: 59,
  execveat: 322,
  ptrace: 101,
  process_vm_readv: 310,
  process_vm_writev: 311,
  pidfd_getfd: 438,
  kcmp: 312,
  mount: 165,
  umount2: 166,
  pivot_root: 155,
  chroot: 161,
  move_mount: 429,
  open_tree: 428,
  fsopen: 430,
  fsmount: 432,
  unshare: 272,
  setns: 308,
  init_module: 175,
  finit_module: 313,
  delete_module: 176,
  kexec_load: 246,
  kexec_file_load: 320,
  bpf: 321,
  perf_event_open: 298,
  userfaultfd: 323,
  keyctl: 250,
  add_key: 248,
  request_key: 249,
  setuid: 105,
  setgid: 106,
  setreuid: 113,
  setregid: 114,
  setgroups: 116,
  setresuid: 117,
  setresgid: 119,
  personality: 135,
  iopl: 172,
  ioperm: 173,
  reboot: 169,
  swapon: 167,
  swapoff: 168,
  acct: 163,
  settimeofday: 164,
  clock_settime: 227,
  adjtimex: 159,
  clock_adjtime: 305,
  syslog: 103,
  quotactl: 179,
  mknod: 133,
  mknodat: 259,
  name_to_handle_at: 303,
  open_by_handle_at: 304,
  fanotify_init: 300,
  mount_setattr: 442,
  fspick: 433,
  fsconfig: 431,
  pidfd_open: 434,
  pidfd_send_signal: 424,
  process_madvise: 440,
  setfsuid: 122,
  setfsgid: 123,
  capset: 126,
  sethostname: 170,
  setdomainname: 171,
  quotactl_fd: 443,
};

/** io_uring could do in a ring what the filter refuses as calls: it fails (ENOSYS) instead. */
const UNAVAILABLE_SYSCALLS = { io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427 };

const SYS = { ioctl: 16, socket: 41, socketpair: 53, clone: 56, clone3: 435, seccomp: 317 } as const;
/** Namespace flags of clone: a thread may not start in new namespaces. */
const CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080;
/** Terminal ioctls that push input into a terminal: refused. */
const TIOCSTI = 0x5412;
const TIOCLINUX = 0x541c;
const AUDIT_ARCH_X86_64 = 0xc000003e;
const AF_UNIX = 1;
const CLONE_THREAD = 0x10000;

const BPF_LD_W_ABS = 0x20;
const BPF_JEQ_K = 0x15;
const BPF_JSET_K = 0x45;
const BPF_JGE_K = 0x35;
const X32_SYSCALL_BIT = 0x40000000;
const BPF_RET_K = 0x06;

export { SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS };

/** Offsets in struct seccomp_data. */
const NR = 0;
const ARCH = 4;
const ARG0_LOW = 16;
const ARG1_LOW = 24;

/**
 * The filter program: on another architecture, or for a refused call, `deny` (default: kill the
 * process). clone is allowed for threads only (CLONE_THREAD); clone3, whose flags a filter cannot
 * read, fails with ENOSYS so the C library falls back to clone. socket is allowed for AF_UNIX.
 */
export function buildFilter(deny: number = SECCOMP_RET_KILL_PROCESS): Buffer {
  const denied = Object.values(DENIED_SYSCALLS);
  // Built with symbolic jump targets (the three returns at the end), resolved to offsets below.
  type Target = 'allow' | 'deny' | 'enosys' | number;
  const sym: { code: number; k: number; jt: Target; jf: Target }[] = [];
  const emit = (code: number, k: number, jt: Target = 0, jf: Target = 0) => sym.push({ code, k, jt, jf });
  emit(BPF_LD_W_ABS, ARCH);
  emit(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, 'deny');
  emit(BPF_LD_W_ABS, NR);
  // x32-ABI calls (the 0x40000000 bit) reach other entry points under the same arch: none allowed.
  emit(BPF_JGE_K, X32_SYSCALL_BIT, 'deny', 0);
  for (const nr of denied) emit(BPF_JEQ_K, nr, 'deny', 0);
  emit(BPF_JEQ_K, SYS.clone3, 'enosys', 0);
  for (const nr of Object.values(UNAVAILABLE_SYSCALLS)) emit(BPF_JEQ_K, nr, 'enosys', 0);
  // clone: allowed for a thread (CLONE_THREAD) in the same namespaces; refused otherwise.
  const cloneAt = sym.length;
  emit(BPF_JEQ_K, SYS.clone, 0, cloneAt + 4);
  emit(BPF_LD_W_ABS, ARG0_LOW);
  emit(BPF_JSET_K, CLONE_NEW_ANY, 'deny', 0);
  emit(BPF_JSET_K, CLONE_THREAD, 'allow', 'deny');
  // ioctl: everything but pushing input into a terminal.
  const ioctlAt = sym.length;
  emit(BPF_JEQ_K, SYS.ioctl, 0, ioctlAt + 4);
  emit(BPF_LD_W_ABS, ARG1_LOW);
  emit(BPF_JEQ_K, TIOCSTI, 'deny', 0);
  emit(BPF_JEQ_K, TIOCLINUX, 'deny', 'allow');
  // socket and socketpair: AF_UNIX only.
  const socketAt = sym.length;
  emit(BPF_JEQ_K, SYS.socket, socketAt + 2, 0);
  emit(BPF_JEQ_K, SYS.socketpair, 0, 'allow');
  emit(BPF_LD_W_ABS, ARG0_LOW);
  emit(BPF_JEQ_K, AF_UNIX, 'allow', 'deny');
  const returns = { allow: sym.length, deny: sym.length + 1, enosys: sym.length + 2 };
  emit(BPF_RET_K, SECCOMP_RET_ALLOW);
  emit(BPF_RET_K, deny >>> 0);
  emit(BPF_RET_K, (SECCOMP_RET_ERRNO | ENOSYS) >>> 0);
  const out = Buffer.alloc(sym.length * 8);
  sym.forEach((ins, i) => {
    // Jump offsets are relative to the next instruction; 0 means "fall through".
    const rel = (t: Target) => {
      if (t === 0) return 0;
      const target = typeof t === 'number' ? t : returns[t];
      if (typeof t === 'number' && t <= i) throw new Error(`seccomp filter: backward jump at ${i}`);
      const off = target - (i + 1);
      if (off < 0 || off > 255) throw new Error(`seccomp filter: jump out of range at ${i}`);
      return off;
    };
    out.writeUInt16LE(ins.code, i * 8);
    const jump = ins.code === BPF_JEQ_K || ins.code === BPF_JSET_K || ins.code === BPF_JGE_K;
    out.writeUInt8(jump ? rel(ins.jt) : 0, i * 8 + 2);
    out.writeUInt8(jump ? rel(ins.jf) : 0, i * 8 + 3);
    out.writeUInt32LE(ins.k >>> 0, i * 8 + 4);
  });
  return out;
}

const PR_SET_NO_NEW_PRIVS = 38;
const SECCOMP_SET_MODE_FILTER = 1;
const SECCOMP_FILTER_FLAG_TSYNC = 1;

/**
 * Installs the filter on every thread of the process (and any started later). Irreversible.
 * Needs no privilege: no_new_privs is set first, as the kernel requires.
 */
export function installSeccomp(deny: number = SECCOMP_RET_KILL_PROCESS): void {
  installProcessFilter(buildFilter(deny));
}

/** Installs a BPF program on every thread of the process (and any started later). Irreversible. */
export function installProcessFilter(program: Buffer): void {
  loadFilter(program, SECCOMP_FILTER_FLAG_TSYNC);
}

/**
 * Installs a BPF program (struct sock_filter[], e.g. one of compileSeccompilerJson's) on the
 * calling thread only: the process's other threads keep their filters; threads this one starts
 * later inherit it. Irreversible. Like installSeccomp, sets no_new_privs first (for the process).
 */
export function installThreadFilter(program: Buffer): void {
  const count = program.length / 8;
  if (!Number.isInteger(count) || count < 1 || count > 4096) {
    throw new SyscallError('seccomp', 22, `a BPF program is 1 to 4096 instructions of 8 bytes, not ${program.length} bytes`);
  }
  loadFilter(program, 0);
}

function loadFilter(filter: Buffer, flags: number): void {
  if (process.arch !== 'x64') throw new SyscallError('seccomp', 22, 'seccomp filters are built for x86_64 only');
  if (sys.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) !== 0) throw new SyscallError('prctl(PR_SET_NO_NEW_PRIVS)', errno());
  const fprog = Buffer.alloc(16); // struct sock_fprog: u16 len, (padding), pointer
  fprog.writeUInt16LE(filter.length / 8, 0);
  fprog.writeBigUInt64LE(BigInt(sys.addressOf(filter)), 8);
  const r = Number(sys.seccompFilter(SYS.seccomp, SECCOMP_SET_MODE_FILTER, flags, fprog));
  // With TSYNC, a positive result is the id of a thread that could not take the filter.
  if (r !== 0) throw new SyscallError('seccomp(SECCOMP_SET_MODE_FILTER)', r > 0 ? 16 : errno(), r > 0 ? `thread ${r} could not take the filter` : undefined);
}
