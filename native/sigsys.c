// fc-run's SIGSYS handler (loaded with koffi by src/kvm/sigsys.ts).
//
// fc-run's seccomp filters answer a call that is not on their list with SECCOMP_RET_TRAP: the
// kernel does not make the call and sends the calling thread SIGSYS, whose siginfo says which
// call it was. No JavaScript can run in a signal handler, so this one is plain C and uses only
// async-signal-safe system calls (gettid, write, rt_sigaction, rt_sigprocmask, tgkill, and ioctl
// TCSETS to put the terminal back; every filter of fc-run's allows them): it writes one line naming the call, its first arguments and
// the thread to stderr (and to a second fd when one was given), then puts SIGSYS back to its
// default action and raises it, so the process ends killed by SIGSYS, exactly as with
// SECCOMP_RET_KILL_PROCESS, and a parent sees the same signal. The line is what KILL_PROCESS
// cannot give: the call's number.
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define MAX_NR 512
#define NAME_LEN 24
#define MAX_THREADS 128
#define LABEL_LEN 32

static char names[MAX_NR][NAME_LEN];
static int extra_fd = -1;
// Threads that registered a label (their filter category): written before any filter is
// installed on them, read by the handler.
static struct {
  int tid;
  char label[LABEL_LEN];
} threads[MAX_THREADS];
static int thread_count;
// The terminal on fd 0 as it was when the handler was installed (before the serial console made it
// raw): put back before dying, as fc-run's normal exit does. The kernel's struct termios, through
// raw TCGETS/TCSETS (glibc's is larger), in a buffer that fits either.
static long saved_termios[8];
static int termios_saved;

// `list`: `count` NUL-terminated names one after the other, the i-th being call number i's.
void fcs_set_names(const char *list, int count) {
  for (int i = 0; i < count && i < MAX_NR; i++) {
    size_t n = strlen(list);
    size_t m = n < NAME_LEN - 1 ? n : NAME_LEN - 1;
    memcpy(names[i], list, m);
    names[i][m] = 0;
    list += n + 1;
  }
}

// Names thread `tid` (e.g. "vmm", "vcpu 0") in the handler's line. At most MAX_THREADS; 0: full.
int fcs_register_thread(int tid, const char *label) {
  int claimed = __atomic_load_n(&thread_count, __ATOMIC_SEQ_CST);
  for (int i = 0; i < claimed && i < MAX_THREADS; i++) {
    if (__atomic_load_n(&threads[i].tid, __ATOMIC_SEQ_CST) == tid) {
      strncpy(threads[i].label, label, LABEL_LEN - 1);
      return 1;
    }
  }
  // Threads register at the same moment (every vCPU worker as it starts): each claims a slot of
  // its own, fills it, then publishes its tid, which is what the handler matches on.
  int slot = __atomic_fetch_add(&thread_count, 1, __ATOMIC_SEQ_CST);
  if (slot >= MAX_THREADS) return 0;
  strncpy(threads[slot].label, label, LABEL_LEN - 1);
  __atomic_store_n(&threads[slot].tid, tid, __ATOMIC_SEQ_CST);
  return 1;
}

static size_t put(char *buf, size_t at, size_t cap, const char *s) {
  while (*s && at + 1 < cap) buf[at++] = *s++;
  return at;
}

static size_t put_dec(char *buf, size_t at, size_t cap, long v) {
  char tmp[24];
  int n = 0;
  unsigned long u = v < 0 ? (unsigned long)(-v) : (unsigned long)v;
  do tmp[n++] = (char)('0' + u % 10), u /= 10;
  while (u);
  if (v < 0 && at + 1 < cap) buf[at++] = '-';
  while (n > 0 && at + 1 < cap) buf[at++] = tmp[--n];
  return at;
}

static size_t put_hex(char *buf, size_t at, size_t cap, unsigned long v) {
  char tmp[20];
  int n = 0;
  do tmp[n++] = "0123456789abcdef"[v & 15], v >>= 4;
  while (v);
  at = put(buf, at, cap, "0x");
  while (n > 0 && at + 1 < cap) buf[at++] = tmp[--n];
  return at;
}

static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    long r = syscall(SYS_write, fd, buf, len);
    if (r <= 0) return; // EINTR cannot happen with every other signal's handler unable to run here
    buf += r;
    len -= (size_t)r;
  }
}

static void on_sigsys(int sig, siginfo_t *info, void *context) {
  (void)sig;
  ucontext_t *uc = context;
  int nr = info->si_syscall;
  int tid = (int)syscall(SYS_gettid);
  const char *label = 0;
  int count = __atomic_load_n(&thread_count, __ATOMIC_SEQ_CST);
  if (count > MAX_THREADS) count = MAX_THREADS;
  for (int i = 0; i < count; i++)
    if (threads[i].tid == tid) label = threads[i].label;
  char line[400];
  size_t n = put(line, 0, sizeof line, "fc-run: killed by SIGSYS (seccomp): syscall ");
  n = put_dec(line, n, sizeof line, nr);
  n = put(line, n, sizeof line, " (");
  n = put(line, n, sizeof line, nr >= 0 && nr < MAX_NR && names[nr][0] ? names[nr] : "unknown");
  n = put(line, n, sizeof line, ") is not on the seccomp filter of thread ");
  n = put_dec(line, n, sizeof line, tid);
  n = put(line, n, sizeof line, " (");
  char comm[17] = { 0 };
  if (!label) {
    // An unregistered thread: a native vCPU thread ("fc_vcpu N") or one of Node's helper threads,
    // which only have the process-wide filter.
    syscall(SYS_prctl, PR_GET_NAME, comm, 0, 0, 0);
    n = put(line, n, sizeof line, "named \"");
    n = put(line, n, sizeof line, comm);
    n = put(line, n, sizeof line, "\"");
  } else {
    n = put(line, n, sizeof line, label);
  }
  n = put(line, n, sizeof line, "); arguments ");
  const greg_t *g = uc->uc_mcontext.gregs;
  const int regs[4] = { REG_RDI, REG_RSI, REG_RDX, REG_R10 };
  for (int i = 0; i < 4; i++) {
    if (i) n = put(line, n, sizeof line, ", ");
    n = put_hex(line, n, sizeof line, (unsigned long)g[regs[i]]);
  }
  n = put(line, n, sizeof line, "\n");
  write_all(2, line, n);
  if (extra_fd >= 0) write_all(extra_fd, line, n);
  // After the line: where a thread's filter refused TCSETS too, that nested trap ends the process
  // at once (SIGSYS is blocked here, so the kernel kills), which is where this was going anyway.
  if (termios_saved) syscall(SYS_ioctl, 0, TCSETS, saved_termios);
  // Die of SIGSYS, as SECCOMP_RET_KILL_PROCESS would make the process die.
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGSYS, &dfl, 0);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGSYS);
  syscall(SYS_rt_sigprocmask, SIG_UNBLOCK, &set, 0, 8);
  syscall(SYS_tgkill, (int)syscall(SYS_getpid), tid, SIGSYS);
  syscall(SYS_exit_group, 128 + SIGSYS);
}

// Installs the handler for the whole process; `fd` (or -1) also gets each line. 0, or -1 (errno).
int fcs_install(int fd) {
  extra_fd = fd;
  termios_saved = syscall(SYS_ioctl, 0, TCGETS, saved_termios) == 0;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO;
  sigfillset(&sa.sa_mask);
  return sigaction(SIGSYS, &sa, 0);
}
