// fc-run's native addon (dist/native/fcrun.node, built by scripts/build-native.js): the only
// way fc-run's JavaScript reaches C. src/kvm/libc.ts loads it; src/kvm/ is its only user.
//
// It exports one function per C call fc-run makes: the libc calls (ioctl, mmap, epoll, ...), the
// native vCPU threads (native/vcpu-threads.c) and the SIGSYS handler (native/sigsys.c), which are
// linked into it. Every call goes through one marshaller: each JavaScript argument becomes a
// 64-bit integer (a number or bigint as it is; null and undefined 0; a boolean 0 or 1; a Buffer,
// typed array, DataView or ArrayBuffer the address of its bytes; a string the address of a
// NUL-terminated UTF-8 copy that lives for the call), the C function is called through a thunk
// with its real prototype (so the compiler, not a guess, gets the calling convention right,
// variadic calls included), and its result comes back as the table says: an int or a long as a
// number (a long beyond 2^53 as a bigint), a pointer as a bigint (NULL as null), or nothing.
// errno is saved, per thread, right after the call (errno() reads it), so nothing Node does
// between the call and the read can change it.
//
// Nothing here keeps JavaScript values or state between calls, so one load serves every thread
// of the process (each thread gets its own function objects).
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

// native/vcpu-threads.c and native/sigsys.c (linked into this addon).
struct fcv_group;
struct fcv_vcpu;
struct fcv_loop_vcpu;
struct fcv_fast;
struct fcv_fast *fcv_fast_new(void *run, uint64_t run_size, void *serial, int com1, int out_fd, void *counts, int slot_io_in, int slot_io_out, int slot_tx_bytes);
void fcv_fast_free(struct fcv_fast *f);
int fcv_fast_exit(struct fcv_fast *f);
long fcv_kvm_run(int fd, uint64_t *run_ns, struct fcv_fast *fast);
struct fcv_group *fcv_group_new(int notify_fd);
void fcv_group_rearm(struct fcv_group *g);
void fcv_group_free(struct fcv_group *g);
uint32_t fcv_group_seq(struct fcv_group *g);
void fcv_group_poke(struct fcv_group *g);
uint32_t fcv_group_wait(struct fcv_group *g, uint32_t seen, int timeout_us);
struct fcv_vcpu *fcv_vcpu_start(struct fcv_group *g, int id, int fd, int kick_signal, const void *filter, int filter_len, int stack_kib, int nice, uint64_t *run_ns, struct fcv_fast *fast);
int fcv_vcpu_state(struct fcv_vcpu *v);
int fcv_vcpu_tid(struct fcv_vcpu *v);
long fcv_vcpu_result(struct fcv_vcpu *v);
int fcv_vcpu_filter_error(struct fcv_vcpu *v);
int fcv_vcpu_run(struct fcv_vcpu *v);
void fcv_vcpu_quit(struct fcv_vcpu *v);
void fcv_vcpu_join(struct fcv_vcpu *v);
struct fcv_loop_vcpu *fcv_loop_vcpu_start(int kick_signal, void *kvm_run);
void fcv_loop_visited(struct fcv_loop_vcpu *w);
long fcv_loop_run(struct fcv_loop_vcpu *w, int fd, uint64_t *run_ns, struct fcv_fast *fast);
void fcv_loop_vcpu_stop(struct fcv_loop_vcpu *w);
int fcv_kick_handler_install(int signum);
void fcs_set_names(const char *list, int count);
int fcs_register_thread(int tid, const char *label);
int fcs_install(int fd);

#define MAX_ARGS 10

typedef int64_t (*thunk_fn)(const int64_t *a);

// How a result goes back to JavaScript.
enum result_kind {
  R_INT,  // a C int: a number
  R_U32,  // a C uint32_t: a number
  R_LONG, // a C long or int64_t: a number (a bigint beyond 2^53)
  R_PTR,  // a pointer or uintptr_t: a bigint, NULL as null
  R_ADDR, // an address that is never NULL in practice: a bigint, 0 as 0n
  R_VOID, // nothing: undefined
};

struct call {
  const char *name;
  thunk_fn thunk;
  unsigned char argc;
  unsigned char result;
};

#define P(i) ((void *)(uintptr_t)a[i])
#define I(i) ((int)a[i])
#define U32(i) ((uint32_t)a[i])
#define L(i) ((long)a[i])
#define UL(i) ((unsigned long)a[i])
#define THUNK(id, expr) \
  static int64_t t_##id(const int64_t *a) { \
    (void)a; \
    return (int64_t)(expr); \
  }
#define THUNK_VOID(id, stmt) \
  static int64_t t_##id(const int64_t *a) { \
    stmt; \
    return 0; \
  }

THUNK(open, open((const char *)P(0), I(1), (mode_t)I(2)))
THUNK(close, close(I(0)))
THUNK(ioctl, ioctl(I(0), UL(1), UL(2)))
THUNK(mmap, (intptr_t)mmap(P(0), (size_t)a[1], I(2), I(3), I(4), (off_t)a[5]))
THUNK(munmap, munmap(P(0), (size_t)a[1]))
THUNK(madvise, madvise(P(0), (size_t)a[1], I(2)))
THUNK(lseek, lseek(I(0), (off_t)a[1], I(2)))
THUNK(eventfd, eventfd((unsigned int)a[0], I(1)))
THUNK(write, write(I(0), P(1), (size_t)a[2]))
THUNK(read, read(I(0), P(1), (size_t)a[2]))
THUNK(syscall3, syscall(L(0), L(1), L(2), L(3)))
THUNK(socket, socket(I(0), I(1), I(2)))
THUNK(bind, bind(I(0), (const struct sockaddr *)P(1), (socklen_t)a[2]))
THUNK(listen, listen(I(0), I(1)))
THUNK(accept4, accept4(I(0), (struct sockaddr *)P(1), (socklen_t *)P(2), I(3)))
THUNK(connect, connect(I(0), (const struct sockaddr *)P(1), (socklen_t)a[2]))
THUNK(sendto, sendto(I(0), P(1), (size_t)a[2], I(3), (const struct sockaddr *)P(4), (socklen_t)a[5]))
THUNK(shutdown, shutdown(I(0), I(1)))
THUNK(identity, a[0])
THUNK(fcntl, fcntl(I(0), I(1), I(2)))
THUNK(flock, flock(I(0), I(1)))
THUNK(prctl, prctl(I(0), UL(1), UL(2), UL(3), UL(4)))
THUNK(setpriority, setpriority(I(0), (id_t)a[1], I(2)))
THUNK(seccomp, syscall(L(0), (unsigned int)a[1], (unsigned int)a[2], P(3)))
THUNK(timerfd_create, timerfd_create(I(0), I(1)))
THUNK(timerfd_settime, timerfd_settime(I(0), I(1), (const struct itimerspec *)P(2), (struct itimerspec *)P(3)))
THUNK(epoll_create1, epoll_create1(I(0)))
THUNK(epoll_ctl, epoll_ctl(I(0), I(1), I(2), (struct epoll_event *)P(3)))
THUNK(epoll_wait, epoll_wait(I(0), (struct epoll_event *)P(1), I(2), I(3)))
THUNK_VOID(exit, _exit(I(0)))
THUNK(pipe2, pipe2((int *)P(0), I(1)))

THUNK(group_new, (intptr_t)fcv_group_new(I(0)))
THUNK_VOID(group_rearm, fcv_group_rearm(P(0)))
THUNK_VOID(group_free, fcv_group_free(P(0)))
THUNK(group_seq, fcv_group_seq(P(0)))
THUNK_VOID(group_poke, fcv_group_poke(P(0)))
THUNK(group_wait, fcv_group_wait(P(0), U32(1), I(2)))
THUNK(vcpu_start, (intptr_t)fcv_vcpu_start(P(0), I(1), I(2), I(3), P(4), I(5), I(6), I(7), P(8), P(9)))
THUNK(kvm_run, fcv_kvm_run(I(0), P(1), P(2)))
THUNK(vcpu_state, fcv_vcpu_state(P(0)))
THUNK(vcpu_tid, fcv_vcpu_tid(P(0)))
THUNK(vcpu_result, fcv_vcpu_result(P(0)))
THUNK(vcpu_filter_error, fcv_vcpu_filter_error(P(0)))
THUNK(vcpu_run, fcv_vcpu_run(P(0)))
THUNK_VOID(vcpu_quit, fcv_vcpu_quit(P(0)))
THUNK_VOID(vcpu_join, fcv_vcpu_join(P(0)))
THUNK(loop_start, (intptr_t)fcv_loop_vcpu_start(I(0), P(1)))
THUNK_VOID(loop_visited, fcv_loop_visited(P(0)))
THUNK(loop_run, fcv_loop_run(P(0), I(1), P(2), P(3)))
THUNK_VOID(loop_stop, fcv_loop_vcpu_stop(P(0)))
THUNK(kick_handler, fcv_kick_handler_install(I(0)))
THUNK(fast_new, (intptr_t)fcv_fast_new(P(0), (uint64_t)a[1], P(2), I(3), I(4), P(5), I(6), I(7), I(8)))
THUNK_VOID(fast_free, fcv_fast_free(P(0)))
THUNK(fast_exit, fcv_fast_exit(P(0)))

THUNK_VOID(sigsys_set_names, fcs_set_names(P(0), I(1)))
THUNK(sigsys_install, fcs_install(I(0)))
THUNK(sigsys_register, fcs_register_thread(I(0), P(1)))

// The names src/kvm/native.ts knows them by, the number of arguments each takes, and its result.
static const struct call CALLS[] = {
  {"open", t_open, 3, R_INT},
  {"close", t_close, 1, R_INT},
  {"ioctl", t_ioctl, 3, R_INT},
  {"mmap", t_mmap, 6, R_PTR},
  {"munmap", t_munmap, 2, R_INT},
  {"madvise", t_madvise, 3, R_INT},
  {"lseek", t_lseek, 3, R_LONG},
  {"eventfd", t_eventfd, 2, R_INT},
  {"write", t_write, 3, R_LONG},
  {"read", t_read, 3, R_LONG},
  {"syscall3", t_syscall3, 4, R_LONG},
  {"socket", t_socket, 3, R_INT},
  {"bind", t_bind, 3, R_INT},
  {"listen", t_listen, 2, R_INT},
  {"accept4", t_accept4, 4, R_INT},
  {"connect", t_connect, 3, R_INT},
  {"sendto", t_sendto, 6, R_LONG},
  {"shutdown", t_shutdown, 2, R_INT},
  // The address of a buffer's bytes, and an address (from another thread) as a pointer.
  {"addressOf", t_identity, 1, R_ADDR},
  {"pointerAt", t_identity, 1, R_PTR},
  {"fcntl", t_fcntl, 3, R_INT},
  {"flock", t_flock, 2, R_INT},
  {"prctl", t_prctl, 5, R_INT},
  {"setpriority", t_setpriority, 3, R_INT},
  {"seccompFilter", t_seccomp, 4, R_LONG},
  {"timerfdCreate", t_timerfd_create, 2, R_INT},
  {"timerfdSettime", t_timerfd_settime, 4, R_INT},
  {"epollCreate1", t_epoll_create1, 1, R_INT},
  {"epollCtl", t_epoll_ctl, 4, R_INT},
  {"epollWait", t_epoll_wait, 4, R_INT},
  {"exit", t_exit, 1, R_VOID},
  {"pipe2", t_pipe2, 2, R_INT},
  {"fcv_group_new", t_group_new, 1, R_PTR},
  {"fcv_group_rearm", t_group_rearm, 1, R_VOID},
  {"fcv_group_free", t_group_free, 1, R_VOID},
  {"fcv_group_seq", t_group_seq, 1, R_U32},
  {"fcv_group_poke", t_group_poke, 1, R_VOID},
  {"fcv_group_wait", t_group_wait, 3, R_U32},
  {"fcv_vcpu_start", t_vcpu_start, 10, R_PTR},
  {"fcv_kvm_run", t_kvm_run, 3, R_LONG},
  {"fcv_vcpu_state", t_vcpu_state, 1, R_INT},
  {"fcv_vcpu_tid", t_vcpu_tid, 1, R_INT},
  {"fcv_vcpu_result", t_vcpu_result, 1, R_LONG},
  {"fcv_vcpu_filter_error", t_vcpu_filter_error, 1, R_INT},
  {"fcv_vcpu_run", t_vcpu_run, 1, R_INT},
  {"fcv_vcpu_quit", t_vcpu_quit, 1, R_VOID},
  {"fcv_vcpu_join", t_vcpu_join, 1, R_VOID},
  {"fcv_loop_vcpu_start", t_loop_start, 2, R_PTR},
  {"fcv_loop_visited", t_loop_visited, 1, R_VOID},
  {"fcv_loop_run", t_loop_run, 4, R_LONG},
  {"fcv_loop_vcpu_stop", t_loop_stop, 1, R_VOID},
  {"fcv_kick_handler_install", t_kick_handler, 1, R_INT},
  {"fcv_fast_new", t_fast_new, 9, R_PTR},
  {"fcv_fast_free", t_fast_free, 1, R_VOID},
  {"fcv_fast_exit", t_fast_exit, 1, R_INT},
  {"fcs_set_names", t_sigsys_set_names, 2, R_VOID},
  {"fcs_install", t_sigsys_install, 1, R_INT},
  {"fcs_register_thread", t_sigsys_register, 2, R_INT},
};

static __thread int saved_errno;

static napi_value throw_type_error(napi_env env, const char *name, size_t index, const char *what) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: argument %zu is %s, not a number, bigint, boolean, string, buffer or null", name, index + 1, what);
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

// The bytes of a Buffer, typed array, DataView or ArrayBuffer; false if `v` is none of them.
static int bytes_of(napi_env env, napi_value v, void **data) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t length, offset;
    napi_value ab;
    return napi_get_typedarray_info(env, v, &type, &length, data, &ab, &offset) == napi_ok;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    size_t length, offset;
    napi_value ab;
    return napi_get_dataview_info(env, v, &length, data, &ab, &offset) == napi_ok;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    size_t length;
    return napi_get_arraybuffer_info(env, v, data, &length) == napi_ok;
  }
  return 0;
}

static napi_value result_of(napi_env env, int kind, int64_t r) {
  napi_value out = NULL;
  switch (kind) {
  case R_INT:
    napi_create_int32(env, (int32_t)r, &out);
    break;
  case R_U32:
    napi_create_uint32(env, (uint32_t)r, &out);
    break;
  case R_LONG:
    if (r >= -9007199254740991LL && r <= 9007199254740991LL) napi_create_int64(env, r, &out);
    else napi_create_bigint_int64(env, r, &out);
    break;
  case R_PTR:
    if (r == 0) napi_get_null(env, &out);
    else napi_create_bigint_uint64(env, (uint64_t)r, &out);
    break;
  case R_ADDR:
    napi_create_bigint_uint64(env, (uint64_t)r, &out);
    break;
  default:
    napi_get_undefined(env, &out);
  }
  return out;
}

static napi_value invoke(napi_env env, napi_callback_info info) {
  size_t argc = MAX_ARGS;
  napi_value argv[MAX_ARGS];
  void *data;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, &data) != napi_ok) return NULL;
  const struct call *c = data;
  int64_t a[MAX_ARGS] = {0};
  char *strings[MAX_ARGS];
  size_t nstrings = 0;
  napi_value failed = NULL;
  int bad = 0;
  if (argc != c->argc) {
    char msg[120];
    snprintf(msg, sizeof msg, "%s: expects %u arguments, got %zu", c->name, (unsigned)c->argc, argc);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  for (size_t i = 0; i < argc && !bad; i++) {
    napi_valuetype t;
    if (napi_typeof(env, argv[i], &t) != napi_ok) {
      bad = 1;
      break;
    }
    switch (t) {
    case napi_number:
      if (napi_get_value_int64(env, argv[i], &a[i]) != napi_ok) bad = 1;
      break;
    case napi_bigint: {
      bool lossless;
      if (napi_get_value_bigint_int64(env, argv[i], &a[i], &lossless) != napi_ok) bad = 1;
      break;
    }
    case napi_boolean: {
      bool b;
      if (napi_get_value_bool(env, argv[i], &b) != napi_ok) bad = 1;
      a[i] = b;
      break;
    }
    case napi_null:
    case napi_undefined:
      break;
    case napi_string: {
      size_t len;
      char *s;
      if (napi_get_value_string_utf8(env, argv[i], NULL, 0, &len) != napi_ok || (s = malloc(len + 1)) == NULL) {
        bad = 1;
        break;
      }
      napi_get_value_string_utf8(env, argv[i], s, len + 1, &len);
      strings[nstrings++] = s;
      a[i] = (int64_t)(uintptr_t)s;
      break;
    }
    case napi_object: {
      void *p = NULL;
      if (bytes_of(env, argv[i], &p)) a[i] = (int64_t)(uintptr_t)p;
      else failed = throw_type_error(env, c->name, i, "an object"), bad = 2;
      break;
    }
    default:
      failed = throw_type_error(env, c->name, i, t == napi_function ? "a function" : t == napi_symbol ? "a symbol" : "of another type"), bad = 2;
    }
  }
  napi_value out = NULL;
  if (!bad) {
    int64_t r = c->thunk(a);
    saved_errno = errno;
    out = result_of(env, c->result, r);
  }
  for (size_t i = 0; i < nstrings; i++) free(strings[i]);
  return bad ? failed : out;
}

// errno as the last call on this thread left it.
static napi_value get_errno(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_create_int32(env, saved_errno, &out);
  return out;
}

// view(address, length): an ArrayBuffer over `length` bytes of this process's memory at `address`
// (guest memory, a kvm_run page), without a copy. Whoever calls it keeps the memory mapped as
// long as the view is used: nothing here can tell.
static napi_value view(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  int64_t addr = 0, length = -1;
  napi_valuetype t;
  bool lossless;
  if (argc < 2 || napi_typeof(env, argv[0], &t) != napi_ok) t = napi_undefined;
  if (t == napi_bigint) napi_get_value_bigint_int64(env, argv[0], &addr, &lossless);
  else if (t == napi_number) napi_get_value_int64(env, argv[0], &addr);
  if (argc >= 2) napi_get_value_int64(env, argv[1], &length);
  if (addr == 0 || length < 0) {
    napi_throw_range_error(env, NULL, "view: an address other than 0 and a length of 0 or more");
    return NULL;
  }
  napi_value out;
  if (length == 0) {
    void *unused;
    if (napi_create_arraybuffer(env, 0, &unused, &out) != napi_ok) return NULL;
    return out;
  }
  if (napi_create_external_arraybuffer(env, (void *)(uintptr_t)addr, (size_t)length, NULL, NULL, &out) != napi_ok) return NULL;
  return out;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  for (size_t i = 0; i < sizeof CALLS / sizeof CALLS[0]; i++) {
    if (napi_create_function(env, CALLS[i].name, NAPI_AUTO_LENGTH, invoke, (void *)&CALLS[i], &fn) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, CALLS[i].name, fn) != napi_ok) return NULL;
  }
  if (napi_create_function(env, "errno", NAPI_AUTO_LENGTH, get_errno, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "errno", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "view", NAPI_AUTO_LENGTH, view, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "view", fn) != napi_ok) return NULL;
  return exports;
}
