import { KVM_EXIT, KVM_MEM_LOG_DIRTY_PAGES } from './ioctls';
import { Kvm } from './kvm';
import { sys } from './libc';
import { GuestMemory } from './memory';
import { KVM_RUN_OFFSETS } from './structs';

/**
 * Whether KVM's dirty log works on this host, found by trying it: a throwaway VM with two pages
 * logged, whose one vCPU (real mode) writes a byte to the second page and halts; the log must then
 * name that page. Some instruction-emulating KVMs report the capability and return an empty log.
 * Returns undefined when it works, otherwise why not. Costs one small VM (milliseconds).
 */
export function dirtyLogProblem(kvm: Kvm): string | undefined {
  const vm = kvm.createVm();
  const mem = GuestMemory.allocate([{ start: 0, size: 0x2000 }]);
  const fds = [vm.fd];
  try {
    // mov byte [0x1000], 0x5a ; hlt
    mem.write(0, Uint8Array.of(0xc6, 0x06, 0x00, 0x10, 0x5a, 0xf4));
    vm.setTssAddr(0xfffbd000);
    const [r] = mem.describe();
    vm.setUserMemoryRegion(0, 0, r.size, r.hostAddr, KVM_MEM_LOG_DIRTY_PAGES);
    const vcpu = vm.createVcpu(0);
    fds.push(vcpu.fd);
    const sregs = vcpu.getSregs();
    for (const seg of ['cs', 'ds', 'es', 'ss'] as const) {
      sregs[seg].base = 0;
      sregs[seg].selector = 0;
    }
    vcpu.setSregs(sregs);
    const regs = vcpu.getRegs();
    vcpu.setRegs({ ...regs, rip: 0n, rflags: 2n, rsp: 0x800n });
    const run = new DataView(vcpu.mapRun());
    let exit = -1;
    for (let i = 0; i < 16 && exit !== KVM_EXIT.HLT; i++) {
      if (!vcpu.run()) continue;
      exit = run.getUint32(KVM_RUN_OFFSETS.exit_reason, true);
      if (exit !== KVM_EXIT.HLT && exit !== KVM_EXIT.INTR) return `the self-test guest stopped with KVM exit ${exit}, not at its HLT`;
    }
    if (exit !== KVM_EXIT.HLT) return 'the self-test guest did not reach its HLT';
    const byte = new Uint8Array(1);
    mem.read(0x1000, byte);
    if (byte[0] !== 0x5a) return 'the self-test guest ran but its write did not land';
    const log = vm.dirtyLog(0, r.size);
    if (!log[1]) return 'KVM_GET_DIRTY_LOG did not report the page the guest wrote';
    return undefined;
  } catch (err) {
    return `the self-test failed: ${(err as Error).message}`;
  } finally {
    for (const fd of fds.reverse()) sys.close(fd);
    mem.release();
  }
}
