/* Runs a command with its output sent to /dev/null and prints, on one line:
 *   wall_us user_us sys_us maxrss_kib exit_status
 * for it and every process it waited for (getrusage(RUSAGE_CHILDREN) semantics through wait4).
 * Usage: rusage COMMAND [ARG...]   (built by the benches with cc -O2) */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: rusage COMMAND [ARG...]\n");
    return 2;
  }
  long long t0 = now_us();
  pid_t pid = fork();
  if (pid < 0) return perror("fork"), 1;
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
    }
    execvp(argv[1], argv + 1);
    _exit(127);
  }
  int status;
  struct rusage ru;
  if (wait4(pid, &status, 0, &ru) < 0) return perror("wait4"), 1;
  long long wall = now_us() - t0;
  long long user = ru.ru_utime.tv_sec * 1000000LL + ru.ru_utime.tv_usec;
  long long sys = ru.ru_stime.tv_sec * 1000000LL + ru.ru_stime.tv_usec;
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  printf("%lld %lld %lld %ld %d\n", wall, user, sys, ru.ru_maxrss, code);
  return 0;
}
