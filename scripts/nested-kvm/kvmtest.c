/* Minimal KVM smoke test: real-mode guest writes 'A' to port 0x3f8 then hlt. */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#define DIE(m) do { perror(m); exit(1); } while (0)
#include <signal.h>
static void onalrm(int s){(void)s; write(1,"KVMTEST TIMEOUT (alarm)\n",24); _exit(2);}
int main(void) {
  setvbuf(stdout,NULL,_IONBF,0); signal(SIGALRM,onalrm); alarm(60);
  const uint8_t code[] = {0xba, 0xf8, 0x03, 0xb0, 'A', 0xee, 0xf4}; /* mov $0x3f8,%dx; mov $'A',%al; out %al,(%dx); hlt */
  struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC); if (kvm < 0) DIE("open /dev/kvm");
  printf("KVM_GET_API_VERSION=%d\n", ioctl(kvm, KVM_GET_API_VERSION, 0));
  int vm = ioctl(kvm, KVM_CREATE_VM, 0); if (vm < 0) DIE("KVM_CREATE_VM");
  printf("KVM_CREATE_VM ok fd=%d\n", vm);
  uint8_t *mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  memcpy(mem, code, sizeof code);
  struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0x1000, .memory_size = 0x1000, .userspace_addr = (uint64_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) DIE("KVM_SET_USER_MEMORY_REGION");
  printf("KVM_SET_USER_MEMORY_REGION ok\n");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0); if (vcpu < 0) DIE("KVM_CREATE_VCPU");
  printf("KVM_CREATE_VCPU ok\n");
  int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  struct kvm_sregs s; if (ioctl(vcpu, KVM_GET_SREGS, &s) < 0) DIE("KVM_GET_SREGS");
  s.cs.base = 0; s.cs.selector = 0; if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) DIE("KVM_SET_SREGS");
  struct kvm_regs g = {.rip = 0x1000, .rflags = 2};
  if (ioctl(vcpu, KVM_SET_REGS, &g) < 0) DIE("KVM_SET_REGS");
  printf("KVM_RUN...\n");
  for (int i = 0; i < 10; i++) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) DIE("KVM_RUN");
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
      printf("KVM_EXIT_IO port=0x%x dir=%d data='%c'\n", run->io.port, run->io.direction, *((char *)run + run->io.data_offset));
      break;
    case KVM_EXIT_HLT:
      clock_gettime(CLOCK_MONOTONIC, &t1);
      printf("KVM_EXIT_HLT\nKVMTEST PASS (%.3f ms)\n", (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
      return 0;
    default:
      printf("unexpected exit_reason=%d\n", run->exit_reason);
      if (run->exit_reason == KVM_EXIT_FAIL_ENTRY) printf("hw reason=0x%llx\n", (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
      if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR) printf("suberror=%u\n", run->internal.suberror);
      return 1;
    }
  }
  printf("KVMTEST FAIL: too many exits\n"); return 1;
}
