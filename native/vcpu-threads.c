// Native vCPU threads for fc-run (loaded with koffi by src/kvm/vcpu-threads.ts).
//
// Each vCPU gets a plain pthread whose only job is KVM_RUN: it enters the guest when told, and
// when KVM returns it publishes the result and wakes the one JavaScript thread that handles every
// vCPU's exits. A thread costs a small stack instead of a V8 isolate (about 10 MiB each). The
// handshake is two futex words per vCPU and one per group, no file descriptors:
//
//   JavaScript                         vCPU thread
//   fcv_vcpu_run(v): state = RUNNING ->  wakes, ioctl(KVM_RUN), result = ret or -errno,
//                                        state = IDLE, group seq++ (wakes fcv_group_wait)
//   notification pipe / fcv_group_wait  <-
//   reads the exit from kvm_run, handles it, fcv_vcpu_run(v) again ...
//
// The thread blocks every signal but the kick signal (and SIGSYS, for the seccomp handler), so a kick (tgkill) lands on it and makes
// KVM_RUN return EINTR; the process's handler for that signal (Node's) only records it. An
// optional seccomp filter is installed by the thread itself before it first enters the guest.
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FCV_KVM_RUN 0xAE80

enum { FCV_STARTING = 0, FCV_IDLE = 1, FCV_RUNNING = 2, FCV_QUIT = 3, FCV_DONE = 4 };

struct fcv_group {
  uint32_t seq;     // bumped on every vCPU event (exit, start, end) and by fcv_group_poke
  uint32_t waiters; // threads inside fcv_group_wait
  int notify_fd;    // written (one byte) when the group has news and is armed; -1: none
  uint32_t notified; // 1 once written, until fcv_group_rearm: one byte per round, never a full pipe
};

struct fcv_vcpu {
  struct fcv_group *group;
  int fd;
  int kick_signal;
  int id;
  uint32_t state;
  int tid;
  long result; // KVM_RUN's return value, or -errno
  int filter_error; // errno of a seccomp filter that could not be installed (the thread then ends)
  int nice;         // the thread's nice value (0: unchanged)
  uint64_t *run_ns; // CPU time this thread spent inside KVM_RUN, added to after each (NULL: not kept)
  struct sock_fprog filter;
  pthread_t thread;
};

static long futex(uint32_t *word, int op, uint32_t val, const struct timespec *timeout) {
  return syscall(SYS_futex, word, op, val, timeout, NULL, 0);
}

static void bump(struct fcv_group *g) {
  __atomic_add_fetch(&g->seq, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&g->waiters, __ATOMIC_SEQ_CST) != 0) futex(&g->seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
  if (g->notify_fd >= 0 && __atomic_exchange_n(&g->notified, 1, __ATOMIC_SEQ_CST) == 0) {
    char one = 1;
    ssize_t r;
    do r = write(g->notify_fd, &one, 1);
    while (r < 0 && errno == EINTR);
  }
}

// This thread's CPU time in nanoseconds (CLOCK_THREAD_CPUTIME_ID: the scheduler's exact runtime,
// whatever the kernel did with it: running the guest, emulating it, or KVM's own exit handling).
static uint64_t thread_ns(void) {
  struct timespec t;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) != 0) return 0;
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

// ioctl(KVM_RUN) with the calling thread's CPU time inside it added to *run_ns (if not NULL): the
// guest's share of fc-run's CPU time, reported apart from the VMM's own (two clock reads, about
// 0.2 µs each, per exit). Returns KVM_RUN's value, or -1 with errno set. A native thread's loop
// calls it, and so does a vCPU worker (a JavaScript thread entering the guest itself).
long fcv_kvm_run(int fd, uint64_t *run_ns) {
  if (!run_ns) return ioctl(fd, FCV_KVM_RUN, 0);
  uint64_t before = thread_ns();
  long r = ioctl(fd, FCV_KVM_RUN, 0);
  int e = errno;
  __atomic_add_fetch(run_ns, thread_ns() - before, __ATOMIC_RELAXED);
  errno = e;
  return r;
}

static void *vcpu_main(void *arg) {
  struct fcv_vcpu *v = arg;
  sigset_t set;
  sigfillset(&set);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  sigemptyset(&set);
  sigaddset(&set, v->kick_signal);
  // SIGSYS too: a call its seccomp filters trap must reach fc-run's handler, which names it (a
  // blocked SIGSYS would make the kernel kill the process without a word).
  sigaddset(&set, SIGSYS);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  v->tid = (int)syscall(SYS_gettid);
  // Named by itself (prctl): naming another thread would open /proc/self/task/<tid>/comm, which
  // its seccomp filters need not allow.
  char name[16];
  snprintf(name, sizeof name, "fc_vcpu %d", v->id);
  prctl(PR_SET_NAME, name, 0, 0, 0);
  // A nice value is per thread on Linux: this one only. Best effort (raising it needs no privilege).
  if (v->nice != 0) setpriority(PRIO_PROCESS, 0, v->nice);
  if (v->filter.len > 0) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &v->filter) != 0) {
      v->filter_error = errno;
      __atomic_store_n(&v->state, FCV_DONE, __ATOMIC_SEQ_CST);
      bump(v->group);
      return NULL;
    }
  }
  // Idle now, unless told to quit while starting.
  uint32_t starting = FCV_STARTING;
  __atomic_compare_exchange_n(&v->state, &starting, FCV_IDLE, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  bump(v->group);
  for (;;) {
    uint32_t s;
    while ((s = __atomic_load_n(&v->state, __ATOMIC_SEQ_CST)) == FCV_IDLE) futex(&v->state, FUTEX_WAIT_PRIVATE, FCV_IDLE, NULL);
    if (s != FCV_RUNNING) break;
    long r = fcv_kvm_run(v->fd, v->run_ns);
    v->result = r < 0 ? -(long)errno : r;
    // Only this thread leaves RUNNING; a QUIT set meanwhile is seen at the top of the loop.
    uint32_t running = FCV_RUNNING;
    __atomic_compare_exchange_n(&v->state, &running, FCV_IDLE, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    bump(v->group);
  }
  __atomic_store_n(&v->state, FCV_DONE, __ATOMIC_SEQ_CST);
  bump(v->group);
  return NULL;
}

// A group; `notify_fd` (or -1) is written one byte when something happened since fcv_group_rearm,
// so an event loop (the main thread's) can watch its other end.
struct fcv_group *fcv_group_new(int notify_fd) {
  struct fcv_group *g = calloc(1, sizeof(struct fcv_group));
  if (g) g->notify_fd = notify_fd;
  return g;
}

// Lets the next event write to the notification fd again. Call it before looking at the vCPUs.
void fcv_group_rearm(struct fcv_group *g) {
  __atomic_store_n(&g->notified, 0, __ATOMIC_SEQ_CST);
}

void fcv_group_free(struct fcv_group *g) {
  free(g);
}

uint32_t fcv_group_seq(struct fcv_group *g) {
  return __atomic_load_n(&g->seq, __ATOMIC_SEQ_CST);
}

// Wakes fcv_group_wait (another thread has something for the JavaScript thread to look at).
void fcv_group_poke(struct fcv_group *g) {
  bump(g);
}

// Waits until the group's sequence differs from `seen` or `timeout_ms` passes; returns it.
uint32_t fcv_group_wait(struct fcv_group *g, uint32_t seen, int timeout_ms) {
  struct timespec ts = { timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L };
  __atomic_add_fetch(&g->waiters, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&g->seq, __ATOMIC_SEQ_CST) == seen) futex(&g->seq, FUTEX_WAIT_PRIVATE, seen, &ts);
  __atomic_sub_fetch(&g->waiters, 1, __ATOMIC_SEQ_CST);
  return __atomic_load_n(&g->seq, __ATOMIC_SEQ_CST);
}

// Starts the thread of vCPU `id` (named "fc_vcpu <id>", as Firecracker names its) on KVM vCPU `fd`. `filter`/`filter_len`: a classic BPF program (sock_filter
// array, copied) for the thread's own seccomp filter, or NULL/0. Returns NULL and sets errno if no
// thread could be made.
// `run_ns` (or NULL): where the thread adds up its CPU time inside KVM_RUN; it must outlive the thread.
struct fcv_vcpu *fcv_vcpu_start(struct fcv_group *g, int id, int fd, int kick_signal, const void *filter, int filter_len, int stack_kib, int nice, uint64_t *run_ns) {
  struct fcv_vcpu *v = calloc(1, sizeof(struct fcv_vcpu));
  if (!v) return NULL;
  v->group = g;
  v->fd = fd;
  v->kick_signal = kick_signal;
  v->id = id;
  v->nice = nice;
  v->run_ns = run_ns;
  if (filter && filter_len > 0) {
    v->filter.filter = malloc((size_t)filter_len * sizeof(struct sock_filter));
    if (!v->filter.filter) {
      free(v);
      errno = ENOMEM;
      return NULL;
    }
    memcpy(v->filter.filter, filter, (size_t)filter_len * sizeof(struct sock_filter));
    v->filter.len = (unsigned short)filter_len;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  if (stack_kib > 0) pthread_attr_setstacksize(&attr, (size_t)stack_kib * 1024);
  int err = pthread_create(&v->thread, &attr, vcpu_main, v);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    free(v->filter.filter);
    free(v);
    errno = err;
    return NULL;
  }
  return v;
}

int fcv_vcpu_state(struct fcv_vcpu *v) {
  return (int)__atomic_load_n(&v->state, __ATOMIC_SEQ_CST);
}

int fcv_vcpu_tid(struct fcv_vcpu *v) {
  return v->tid;
}

long fcv_vcpu_result(struct fcv_vcpu *v) {
  return v->result;
}

int fcv_vcpu_filter_error(struct fcv_vcpu *v) {
  return v->filter_error;
}

// Enters the guest once; 0, or -1 if the thread is not idle (starting, running, quitting or done).
int fcv_vcpu_run(struct fcv_vcpu *v) {
  uint32_t idle = FCV_IDLE;
  if (!__atomic_compare_exchange_n(&v->state, &idle, FCV_RUNNING, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return -1;
  futex(&v->state, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
  return 0;
}

// Tells the thread to end once it is out of KVM_RUN (kick it if it may be inside).
void fcv_vcpu_quit(struct fcv_vcpu *v) {
  // Never over DONE: a thread that ended meanwhile must stay seen as ended.
  uint32_t s = __atomic_load_n(&v->state, __ATOMIC_SEQ_CST);
  while (s != FCV_DONE && s != FCV_QUIT) {
    if (__atomic_compare_exchange_n(&v->state, &s, FCV_QUIT, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
      futex(&v->state, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
      return;
    }
  }
}

// Waits for the thread to end and frees it. Only after fcv_vcpu_quit (and a kick).
void fcv_vcpu_join(struct fcv_vcpu *v) {
  pthread_join(v->thread, NULL);
  free(v->filter.filter);
  free(v);
}
