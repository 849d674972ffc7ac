/** seccomp return actions (linux/seccomp.h), for the built-in filter (seccomp.ts) and compiled ones (seccompiler.ts). */
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_KILL_THREAD = 0x00000000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_TRACE = 0x7ff00000;
export const SECCOMP_RET_LOG = 0x7ffc0000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;

/** errno values a filter answers with SECCOMP_RET_ERRNO. */
export const ENOSYS = 38;
export const EACCES = 13;
