/* Runs a command and prints, on one line, what it cost:
 *   wall_us user_us sys_us maxrss_kib exit_status guest_us
 * user and sys are the command's and its waited-for children's (wait4); guest_us is the part of
 * the command's CPU time Linux accounted to running a KVM guest (guest_time in /proc/PID/stat,
 * read while the exited command is still a zombie, so every thread of it is counted).
 * Usage: rusage [--keep-stdout] COMMAND [ARG...]
 *   default: the command's output goes to /dev/null and the line to standard output;
 *   --keep-stdout: the command keeps standard output and error (a bench reads them) and the line
 *   goes to standard error, after everything the command wrote there.
 * (built by the benches with cc -O2) */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* guest_time (field 43) of /proc/PID/stat in clock ticks, or -1. */
static long long guest_ticks(pid_t pid) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
  if (!p) return -1;
  /* After ")": field 3 onward; guest_time is field 43. */
  int field = 2;
  for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
    if (++field == 43) return atoll(tok);
  }
  return -1;
}

int main(int argc, char **argv) {
  int keep = argc > 1 && strcmp(argv[1], "--keep-stdout") == 0;
  char **cmd = argv + 1 + keep;
  if (!cmd[0]) {
    fprintf(stderr, "usage: rusage [--keep-stdout] COMMAND [ARG...]\n");
    return 2;
  }
  long long t0 = now_us();
  pid_t pid = fork();
  if (pid < 0) return perror("fork"), 1;
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      if (!keep) {
        dup2(null, 1);
        dup2(null, 2);
      }
    }
    execvp(cmd[0], cmd);
    _exit(127);
  }
  siginfo_t info;
  if (waitid(P_PID, pid, &info, WEXITED | WNOWAIT) < 0) return perror("waitid"), 1;
  long long wall = now_us() - t0;
  long long guest = guest_ticks(pid);
  int status;
  struct rusage ru;
  if (wait4(pid, &status, 0, &ru) < 0) return perror("wait4"), 1;
  long long user = ru.ru_utime.tv_sec * 1000000LL + ru.ru_utime.tv_usec;
  long long sys = ru.ru_stime.tv_sec * 1000000LL + ru.ru_stime.tv_usec;
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  long long guest_us = guest < 0 ? -1 : guest * 1000000LL / sysconf(_SC_CLK_TCK);
  fprintf(keep ? stderr : stdout, "%lld %lld %lld %ld %d %lld\n", wall, user, sys, ru.ru_maxrss, code, guest_us);
  return 0;
}
