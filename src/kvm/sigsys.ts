import * as fs from 'node:fs';
import { gettid, NATIVE_ADDON, nativeAddon, NativeFunction } from './libc';

/**
 * fc-run's SIGSYS handler (native/sigsys.c, linked into fc-run's native addon): when a
 * seccomp filter traps a call (SECCOMP_RET_TRAP), it writes
 *   fc-run: killed by SIGSYS (seccomp): syscall 59 (execve) is not on the seccomp filter of thread …
 * to stderr (and to FC_RUN_SECCOMP_REPORT's file, when that is set) and ends the process by
 * SIGSYS, as SECCOMP_RET_KILL_PROCESS would. Everything here runs before the filters are installed:
 * loading the addon needs open and mmap, which the filters may not allow.
 */

/** The start of the handler's line, for whoever reads stderr (the tests, `fc-run up`'s logs). */
export const SIGSYS_LINE_PREFIX = 'fc-run: killed by SIGSYS (seccomp): ';

let lib: { setNames: NativeFunction; install: NativeFunction; register: NativeFunction } | undefined;

/**
 * Loads the library (once per process; a thread's call after the first finds it loaded). Threads
 * call it when they start, before any filter: loading opens and maps the file.
 */
export function loadSigsysLibrary(): void {
  load();
  gettid(); // loads the addon on this thread too
  // V8 finds the local time zone on first use of local time, per thread: it opens /etc/localtime
  // and, where that is missing (a jail), reads the /usr/share/zoneinfo directory.
  new Date(0).getTimezoneOffset();
}

function load(): typeof lib {
  if (lib) return lib;
  if (!fs.existsSync(NATIVE_ADDON)) return undefined;
  const n = nativeAddon();
  lib = {
    setNames: n.fcs_set_names, // (list, count)
    install: n.fcs_install, // (fd) -> 0 or -1
    register: n.fcs_register_thread, // (tid, label)
  };
  return lib;
}

/**
 * Installs the handler for the whole process; `syscalls` names the calls (X86_64_SYSCALLS). False when the library is missing (fc-run built
 * without a C compiler): the caller then kills instead of trapping, which names nothing.
 */
export function installSigsysHandler(syscalls: ReadonlyMap<string, number>, reportFd = -1): boolean {
  const l = load();
  if (!l) return false;
  const byNumber: string[] = [];
  for (const [name, nr] of syscalls) if (nr < 512) byNumber[nr] = name;
  const names = Array.from({ length: byNumber.length }, (_, i) => byNumber[i] ?? '');
  l.setNames(Buffer.from(names.join('\0') + '\0'), names.length);
  return l.install(reportFd) === 0;
}

/** Names the calling thread (or thread `tid`) in the handler's line: its filter's category. */
export function registerSigsysThread(label: string, tid = gettid()): void {
  load()?.register(tid, label);
}

/** The fd the handler also writes to: FC_RUN_SECCOMP_REPORT's file (appended), for test runs. */
export function reportFdFromEnvironment(): number {
  const file = process.env.FC_RUN_SECCOMP_REPORT;
  if (!file) return -1;
  try {
    return fs.openSync(file, 'a');
  } catch {
    return -1;
  }
}
