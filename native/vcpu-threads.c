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
// KVM_RUN return EINTR; the process's handler for that signal (fcv_kick_handler_install's) does nothing. An
// optional seccomp filter is installed by the thread itself before it first enters the guest.
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
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
  struct fcv_fast *fast; // hot exits handled on this thread (NULL: none)
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

// CLOCK_MONOTONIC in nanoseconds (from the vDSO: no system call).
static int64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

// ---------------------------------------------------------------------------------------------
// The serial console's hot exits, handled right after KVM_RUN returns, on the thread that made it:
// a guest printing polls the line status register (LSR) and writes the transmit holding register
// (THR), two exits per byte, the most frequent exits of a booting guest by far. Handling them here
// costs no return to JavaScript. Only the common case is handled, where the result is exactly what
// the JavaScript model (src/devices/legacy/serial.ts, whose shared state this reads and writes under
// the same spinlock) gives: divisor latch off, no loopback, the transmitter's empty interrupt off,
// nothing waiting in the transmit buffer and nobody writing it. Anything else (and a write the
// output does not take at once) is left to JavaScript, with nothing done here.

// Words of the UART's shared state (Serial8250's REG in src/devices/legacy/serial.ts).
enum { SR_IER = 0, SR_LCR = 1, SR_MCR = 2, SR_THRE_PENDING = 7, SR_RX_HEAD = 8, SR_RX_TAIL = 9, SR_LOCK = 10, SR_TX_HEAD = 11, SR_TX_TAIL = 12, SR_TX_WAIT = 13, SR_DRAINING = 14 };
// Its transmit buffer and FIFO (SERIAL_TX_CAPACITY, SERIAL_TX_FIFO there).
#define SERIAL_TX_CAPACITY 65536
#define SERIAL_TX_FIFO 16
#define FCV_EXIT_IO 2
#define FCV_EXIT_IO_IN 0
#define FCV_EXIT_IO_OUT 1

struct fcv_fast {
  uint8_t *run;      // the vCPU's kvm_run mapping (any thread's: threads share the address space)
  uint64_t run_size; // its size (KVM_GET_VCPU_MMAP_SIZE): port I/O data is in its second page
  int32_t *serial;   // the UART's shared state words
  int com1;          // its first port
  int out_fd;        // where transmitted bytes go; -1: discarded (taken, as the JavaScript sink does)
  double *counts;    // the metrics values (this vCPU's slots are written by its exit handler only)
  int slot_io_in, slot_io_out, slot_tx_bytes; // an I/O exit counts by its direction only
};

// Everything is validated by the caller (JavaScript, which knows the sizes); NULL if out of memory.
struct fcv_fast *fcv_fast_new(void *run, uint64_t run_size, void *serial, int com1, int out_fd, void *counts, int slot_io_in, int slot_io_out, int slot_tx_bytes) {
  struct fcv_fast *f = calloc(1, sizeof(struct fcv_fast));
  if (!f) return NULL;
  f->run = run;
  f->run_size = run_size;
  f->serial = serial;
  f->com1 = com1;
  f->out_fd = out_fd;
  f->counts = counts;
  f->slot_io_in = slot_io_in;
  f->slot_io_out = slot_io_out;
  f->slot_tx_bytes = slot_tx_bytes;
  return f;
}

void fcv_fast_free(struct fcv_fast *f) {
  free(f);
}

static void serial_lock(int32_t *w) {
  int32_t free_ = 0;
  while (!__atomic_compare_exchange_n(&w[SR_LOCK], &free_, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) free_ = 0;
}

static void serial_unlock(int32_t *w) {
  __atomic_store_n(&w[SR_LOCK], 0, __ATOMIC_SEQ_CST);
}

// The transmit side is idle and plain: what both fast paths need (lock held).
static int serial_plain(int32_t *w) {
  return (w[SR_LCR] & 0x80) == 0 && (w[SR_MCR] & 0x10) == 0 && (w[SR_IER] & 0x02) == 0 && w[SR_TX_HEAD] == w[SR_TX_TAIL] && w[SR_TX_WAIT] == 0;
}

// Handles the exit KVM_RUN just returned with if it is one of the serial port's hot ones: 1 if it
// did (the exit is complete: enter the guest again), 0 if JavaScript must handle it.
int fcv_fast_exit(struct fcv_fast *f) {
  if (!f) return 0;
  uint8_t *run = f->run;
  uint32_t reason;
  memcpy(&reason, run + 8, 4);
  if (reason != FCV_EXIT_IO) return 0;
  uint8_t *io = run + 32; // struct kvm_run's io: direction, size, port, count, data_offset
  uint16_t port;
  uint32_t count;
  uint64_t offset;
  memcpy(&port, io + 2, 2);
  memcpy(&count, io + 4, 4);
  memcpy(&offset, io + 8, 8);
  if (io[1] != 1 || count != 1 || offset >= f->run_size) return 0;
  int32_t *w = f->serial;
  if (io[0] == FCV_EXIT_IO_IN && port == f->com1 + 5) {
    // LSR: THRE and TEMT while the transmit buffer has room for a FIFO's worth, DR if a received
    // byte waits. (Without that room, the model first offers the output what waits.)
    serial_lock(w);
    int waiting = (w[SR_TX_TAIL] - w[SR_TX_HEAD] + SERIAL_TX_CAPACITY) % SERIAL_TX_CAPACITY;
    int room = SERIAL_TX_CAPACITY - 1 - waiting >= SERIAL_TX_FIFO;
    int rx = w[SR_RX_HEAD] != w[SR_RX_TAIL];
    serial_unlock(w);
    if (!room) return 0;
    run[offset] = (uint8_t)(0x60 | (rx ? 0x01 : 0));
    f->counts[f->slot_io_in] += 1;
    return 1;
  }
  if (io[0] == FCV_EXIT_IO_OUT && port == f->com1) {
    // THR: the byte goes straight to the output, as the JavaScript model's flush would write it,
    // with its DRAINING word held so no other thread writes meanwhile.
    int32_t idle = 0;
    if (!__atomic_compare_exchange_n(&w[SR_DRAINING], &idle, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return 0;
    serial_lock(w);
    int plain = serial_plain(w);
    serial_unlock(w);
    int sent = 0;
    if (plain) {
      if (f->out_fd < 0) sent = 1;
      else {
        ssize_t n;
        do n = write(f->out_fd, run + offset, 1);
        while (n < 0 && errno == EINTR);
        sent = n == 1;
      }
    }
    if (sent) {
      serial_lock(w);
      w[SR_THRE_PENDING] = 1; // the transmitter has room: as the model's write leaves it
      serial_unlock(w);
    }
    __atomic_store_n(&w[SR_DRAINING], 0, __ATOMIC_SEQ_CST);
    if (!sent) return 0; // not plain, or the output did not take it now: JavaScript queues it
    f->counts[f->slot_io_out] += 1;
    f->counts[f->slot_tx_bytes] += 1;
    return 1;
  }
  return 0;
}

// ioctl(KVM_RUN), and again while the exits it returns with are ones `fast` (or NULL: none)
// handles; returns the first result that is not one of those: KVM_RUN's value, or -1 with errno
// set. A native thread's loop, the main thread's (fcv_loop_run) and a vCPU worker (a JavaScript
// thread entering the guest itself) all enter the guest here.
//
// With `run_ns`, the calling thread's CPU time inside KVM_RUN is added to *run_ns: the guest's
// share of fc-run's CPU time, reported apart from the VMM's own. That is the thread's CPU time
// over the whole stretch less the time spent handling exits here, read on the monotonic clock
// (vDSO, no system call; the thread clock is one, ~5 µs here, and reading it around every exit
// cost a launch of the probe 10 ms). Time the thread was preempted while handling an exit is taken
// from the guest's share, never added to it.
long fcv_kvm_run(int fd, uint64_t *run_ns, struct fcv_fast *fast) {
  uint64_t before = run_ns ? thread_ns() : 0;
  uint64_t handling = 0;
  long r;
  while ((r = ioctl(fd, FCV_KVM_RUN, 0)) == 0 && fast) {
    int64_t t0 = run_ns ? mono_ns() : 0;
    int done = fcv_fast_exit(fast);
    if (run_ns) handling += (uint64_t)(mono_ns() - t0);
    if (!done) break;
  }
  if (run_ns) {
    int e = errno;
    uint64_t spent = thread_ns() - before;
    __atomic_add_fetch(run_ns, spent > handling ? spent - handling : 0, __ATOMIC_RELAXED);
    errno = e;
  }
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
    long r = fcv_kvm_run(v->fd, v->run_ns, v->fast);
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

// Waits until the group's sequence differs from `seen` or `timeout_us` microseconds pass; returns it.
uint32_t fcv_group_wait(struct fcv_group *g, uint32_t seen, int timeout_us) {
  struct timespec ts = { timeout_us / 1000000, (long)(timeout_us % 1000000) * 1000L };
  __atomic_add_fetch(&g->waiters, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&g->seq, __ATOMIC_SEQ_CST) == seen) futex(&g->seq, FUTEX_WAIT_PRIVATE, seen, &ts);
  __atomic_sub_fetch(&g->waiters, 1, __ATOMIC_SEQ_CST);
  return __atomic_load_n(&g->seq, __ATOMIC_SEQ_CST);
}

// Starts the thread of vCPU `id` (named "fc_vcpu <id>", as Firecracker names its) on KVM vCPU `fd`. `filter`/`filter_len`: a classic BPF program (sock_filter
// array, copied) for the thread's own seccomp filter, or NULL/0. Returns NULL and sets errno if no
// thread could be made.
// `run_ns` (or NULL): where the thread adds up its CPU time inside KVM_RUN; it must outlive the thread.
// `fast` (or NULL): the hot exits the thread handles itself (fcv_kvm_run); it must outlive the thread.
struct fcv_vcpu *fcv_vcpu_start(struct fcv_group *g, int id, int fd, int kick_signal, const void *filter, int filter_len, int stack_kib, int nice, uint64_t *run_ns, struct fcv_fast *fast) {
  struct fcv_vcpu *v = calloc(1, sizeof(struct fcv_vcpu));
  if (!v) return NULL;
  v->group = g;
  v->fd = fd;
  v->kick_signal = kick_signal;
  v->id = id;
  v->nice = nice;
  v->run_ns = run_ns;
  v->fast = fast;
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

// ---------------------------------------------------------------------------------------------
// A vCPU on the event loop's own thread (the main thread): it calls fcv_loop_run, which enters
// the guest right there, so an exit costs no hand-off between threads and the vCPU no thread of
// its own. While it is inside the guest the event loop cannot run, so a watcher thread does the
// loop's waiting: it polls the loop's epoll fd (libuv's uv_backend_fd, readable when any of the
// loop's handles has an event: a signal, a worker's message, the native vCPU threads' pipe, a
// socket) until the loop's next timer is due, and then gets the vCPU out of the guest
// (immediate_exit, for a thread about to enter it, and the kick signal, for one inside). The
// thread returns to the loop, which runs what is due, and calls fcv_loop_visited before it
// enters the guest again.
//
//   state IDLE    the vCPU is out of the guest; the watcher waits on the state word
//         ARMED   inside the guest (or about to be): the watcher polls the loop
//         KICKED  the loop has work: fcv_loop_run enters with immediate_exit set (EINTR at once,
//                 the last exit completed) until fcv_loop_visited
//         QUIT    the watcher ends

struct uv_loop_s;
extern struct uv_loop_s *uv_default_loop(void) __attribute__((weak));
extern int uv_backend_fd(const struct uv_loop_s *) __attribute__((weak));
extern int uv_backend_timeout(const struct uv_loop_s *) __attribute__((weak));

enum { FCL_IDLE = 0, FCL_ARMED = 1, FCL_KICKED = 2, FCL_QUIT = 3 };

struct fcv_loop_vcpu {
  struct uv_loop_s *loop;
  int loop_fd;
  int tid; // the thread that runs the vCPU (the loop's)
  int kick_signal;
  volatile uint8_t *immediate_exit; // in the vCPU's kvm_run page
  uint32_t state;
  uint32_t watcher_waits; // the watcher is (about to be) in FUTEX_WAIT on state
  int64_t deadline_ns;    // CLOCK_MONOTONIC time of the loop's next timer; -1: none
  uint32_t kicked_exit;   // the watcher set immediate_exit (fcv_loop_visited clears it)
  pthread_t thread;
};

// Moves ARMED or IDLE to KICKED: the next fcv_loop_run returns to the loop. A thread inside the
// guest is got out of it; one about to enter finds immediate_exit set.
static void kick_loop_vcpu(struct fcv_loop_vcpu *w) {
  uint32_t s = __atomic_load_n(&w->state, __ATOMIC_SEQ_CST);
  while (s == FCL_ARMED || s == FCL_IDLE) {
    if (__atomic_compare_exchange_n(&w->state, &s, FCL_KICKED, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
      if (s == FCL_ARMED) {
        __atomic_store_n(&w->kicked_exit, 1, __ATOMIC_SEQ_CST);
        __atomic_store_n(w->immediate_exit, 1, __ATOMIC_SEQ_CST);
        syscall(SYS_tgkill, getpid(), w->tid, w->kick_signal);
      }
      return;
    }
  }
}

static void *loop_watcher(void *arg) {
  struct fcv_loop_vcpu *w = arg;
  sigset_t set;
  sigfillset(&set);
  sigdelset(&set, SIGSYS); // for the seccomp handler, as on the vCPU threads
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  prctl(PR_SET_NAME, "fc_loop_watch", 0, 0, 0);
  for (;;) {
    uint32_t s = __atomic_load_n(&w->state, __ATOMIC_SEQ_CST);
    if (s == FCL_QUIT) break;
    if (s != FCL_ARMED) {
      __atomic_store_n(&w->watcher_waits, 1, __ATOMIC_SEQ_CST);
      if (__atomic_load_n(&w->state, __ATOMIC_SEQ_CST) == s) futex(&w->state, FUTEX_WAIT_PRIVATE, s, NULL);
      __atomic_store_n(&w->watcher_waits, 0, __ATOMIC_SEQ_CST);
      continue;
    }
    // Armed: wait for the loop to have an event or a timer due. The vCPU may go in and out of the
    // guest meanwhile (exits handled on its thread): the loop's fd and timers are the same.
    int64_t deadline = __atomic_load_n(&w->deadline_ns, __ATOMIC_SEQ_CST);
    int timeout = -1;
    if (deadline >= 0) {
      int64_t left = deadline - mono_ns();
      timeout = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
    }
    // At most a second at a time, so a QUIT (or a state left ARMED for long) is seen.
    if (timeout < 0 || timeout > 1000) timeout = 1000;
    struct pollfd p = { .fd = w->loop_fd, .events = POLLIN };
    int r = poll(&p, 1, timeout);
    if (r < 0 && errno != EINTR) {
      // Cannot watch the loop: get the vCPU out now and then, so the loop still runs.
      struct timespec ms = { 0, 1000000 };
      nanosleep(&ms, NULL);
      kick_loop_vcpu(w);
      continue;
    }
    int due = r > 0;
    if (!due) {
      deadline = __atomic_load_n(&w->deadline_ns, __ATOMIC_SEQ_CST);
      due = deadline >= 0 && mono_ns() >= deadline;
    }
    if (due) kick_loop_vcpu(w);
  }
  return NULL;
}

// Starts the watcher of a vCPU whose guest entries the calling thread (the event loop's) makes
// through fcv_loop_run; `kvm_run` is the vCPU's mapped kvm_run page. NULL (errno set) if this
// process has no libuv loop to watch (the library outside Node) or no thread could be made.
struct fcv_loop_vcpu *fcv_loop_vcpu_start(int kick_signal, void *kvm_run) {
  if (!uv_default_loop || !uv_backend_fd || !uv_backend_timeout) {
    errno = ENOSYS;
    return NULL;
  }
  struct fcv_loop_vcpu *w = calloc(1, sizeof(struct fcv_loop_vcpu));
  if (!w) return NULL;
  w->loop = uv_default_loop();
  w->loop_fd = uv_backend_fd(w->loop);
  w->tid = (int)syscall(SYS_gettid);
  w->kick_signal = kick_signal;
  w->immediate_exit = (volatile uint8_t *)kvm_run + 1; // struct kvm_run: request_interrupt_window, immediate_exit
  w->deadline_ns = -1;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  int err = pthread_create(&w->thread, &attr, loop_watcher, w);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    free(w);
    errno = err;
    return NULL;
  }
  return w;
}

// The loop has run (the caller is in one of its callbacks): a kick has been answered. Call it
// before deciding what the vCPU does next; the watcher's immediate_exit is taken back.
void fcv_loop_visited(struct fcv_loop_vcpu *w) {
  uint32_t kicked = FCL_KICKED;
  if (__atomic_compare_exchange_n(&w->state, &kicked, FCL_IDLE, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    if (__atomic_exchange_n(&w->kicked_exit, 0, __ATOMIC_SEQ_CST)) *w->immediate_exit = 0;
  }
}

// Enters the guest once on the calling thread (the loop's), with the watcher armed; its time
// inside KVM_RUN is added to *run_ns (if not NULL). Returns KVM_RUN's value, or -errno: -EINTR
// also when the loop has work waiting (return to it, then call fcv_loop_visited). Exits `fast`
// handles (or NULL) are handled here, the guest entered again (fcv_kvm_run).
long fcv_loop_run(struct fcv_loop_vcpu *w, int fd, uint64_t *run_ns, struct fcv_fast *fast) {
  int timeout = uv_backend_timeout(w->loop);
  __atomic_store_n(&w->deadline_ns, timeout < 0 ? -1 : mono_ns() + (int64_t)timeout * 1000000, __ATOMIC_SEQ_CST);
  uint32_t idle = FCL_IDLE;
  if (!__atomic_compare_exchange_n(&w->state, &idle, FCL_ARMED, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    // KICKED: the loop has work. The guest is still entered, with immediate_exit set: KVM then
    // completes the exit just handled (an IN's value, an MMIO read's) and returns EINTR without
    // running guest code, which a vCPU about to park needs (else it parks before the I/O is done).
    __atomic_store_n(&w->kicked_exit, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(w->immediate_exit, 1, __ATOMIC_SEQ_CST);
    long r = fcv_kvm_run(fd, run_ns, fast);
    return r < 0 ? -(long)errno : r;
  }
  if (__atomic_load_n(&w->watcher_waits, __ATOMIC_SEQ_CST)) futex(&w->state, FUTEX_WAKE_PRIVATE, 1, NULL);
  long r = fcv_kvm_run(fd, run_ns, fast);
  long result = r < 0 ? -(long)errno : r;
  uint32_t armed = FCL_ARMED;
  __atomic_compare_exchange_n(&w->state, &armed, FCL_IDLE, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); // else KICKED: stays so
  return result;
}

// Tells the watcher to end (the vCPU is out of the guest for good). Not waited for: it may be
// inside poll until the loop's next event or timer, at most a second, and a stopping VM must not
// wait on that. Its few bytes are not freed (it may still read them): one per VM, for good.
void fcv_loop_vcpu_stop(struct fcv_loop_vcpu *w) {
  __atomic_store_n(&w->state, FCL_QUIT, __ATOMIC_SEQ_CST);
  futex(&w->state, FUTEX_WAKE_PRIVATE, 1, NULL);
  pthread_detach(w->thread);
}

// ---------------------------------------------------------------------------------------------
// The kick signal's handler: nothing. Its only effect is the signal itself, which makes KVM_RUN
// return EINTR on the thread it lands on. (Node's own handler, for a process.on listener, would
// also write each kick into the event loop's signal pipe: a wake-up of the loop per kick, for
// nothing.) SA_RESTART: another system call it interrupts carries on.
static void fcv_kick_noop(int sig) {
  (void)sig;
}

int fcv_kick_handler_install(int signum) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = fcv_kick_noop;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  return sigaction(signum, &sa, NULL) == 0 ? 0 : -errno;
}
