import { koffiModule } from './libc';

const koffi = koffiModule();

/**
 * koffi registers struct names process-wide, and a module can be evaluated more than once in one
 * process (test runners do), so a second declaration reuses the first.
 */
function struct(name: string, fields: Record<string, unknown>): unknown {
  try {
    return koffi.struct(name, fields as never);
  } catch (err) {
    if (!/Duplicate type name/.test((err as Error).message)) throw err;
    return koffi.resolve(name);
  }
}

/**
 * The KVM structures fc-run exchanges with the kernel, declared to koffi with the layouts of
 * <linux/kvm.h> and <asm/kvm.h> on x86_64 (test/unit/kvm-abi.test.ts checks every size and offset
 * against the C headers). Hot paths read kvm_run through a DataView instead of decoding it.
 */
export const kvm_userspace_memory_region = struct('kvm_userspace_memory_region', {
  slot: 'uint32_t',
  flags: 'uint32_t',
  guest_phys_addr: 'uint64_t',
  memory_size: 'uint64_t',
  userspace_addr: 'uint64_t',
});

export const kvm_regs = struct('kvm_regs', {
  rax: 'uint64_t', rbx: 'uint64_t', rcx: 'uint64_t', rdx: 'uint64_t',
  rsi: 'uint64_t', rdi: 'uint64_t', rsp: 'uint64_t', rbp: 'uint64_t',
  r8: 'uint64_t', r9: 'uint64_t', r10: 'uint64_t', r11: 'uint64_t',
  r12: 'uint64_t', r13: 'uint64_t', r14: 'uint64_t', r15: 'uint64_t',
  rip: 'uint64_t', rflags: 'uint64_t',
});

export const kvm_segment = struct('kvm_segment', {
  base: 'uint64_t',
  limit: 'uint32_t',
  selector: 'uint16_t',
  type: 'uint8_t',
  present: 'uint8_t',
  dpl: 'uint8_t',
  db: 'uint8_t',
  s: 'uint8_t',
  l: 'uint8_t',
  g: 'uint8_t',
  avl: 'uint8_t',
  unusable: 'uint8_t',
  padding: 'uint8_t',
});

export const kvm_dtable = struct('kvm_dtable', {
  base: 'uint64_t',
  limit: 'uint16_t',
  padding: koffi.array('uint16_t', 3),
});

export const kvm_sregs = struct('kvm_sregs', {
  cs: kvm_segment, ds: kvm_segment, es: kvm_segment, fs: kvm_segment,
  gs: kvm_segment, ss: kvm_segment, tr: kvm_segment, ldt: kvm_segment,
  gdt: kvm_dtable, idt: kvm_dtable,
  cr0: 'uint64_t', cr2: 'uint64_t', cr3: 'uint64_t', cr4: 'uint64_t', cr8: 'uint64_t',
  efer: 'uint64_t',
  apic_base: 'uint64_t',
  interrupt_bitmap: koffi.array('uint64_t', 4),
});

export const kvm_fpu = struct('kvm_fpu', {
  fpr: koffi.array('uint8_t', 128),
  fcw: 'uint16_t',
  fsw: 'uint16_t',
  ftwx: 'uint8_t',
  pad1: 'uint8_t',
  last_opcode: 'uint16_t',
  last_ip: 'uint64_t',
  last_dp: 'uint64_t',
  xmm: koffi.array('uint8_t', 256),
  mxcsr: 'uint32_t',
  pad2: 'uint32_t',
});

export const kvm_msr_entry = struct('kvm_msr_entry', {
  index: 'uint32_t',
  reserved: 'uint32_t',
  data: 'uint64_t',
});

/** Header of struct kvm_msrs; the entries follow it in the same buffer. */
export const kvm_msrs = struct('kvm_msrs', { nmsrs: 'uint32_t', pad: 'uint32_t' });

export const kvm_cpuid_entry2 = struct('kvm_cpuid_entry2', {
  function: 'uint32_t',
  index: 'uint32_t',
  flags: 'uint32_t',
  eax: 'uint32_t',
  ebx: 'uint32_t',
  ecx: 'uint32_t',
  edx: 'uint32_t',
  padding: koffi.array('uint32_t', 3),
});

/** Header of struct kvm_cpuid2; the entries follow it in the same buffer. */
export const kvm_cpuid2 = struct('kvm_cpuid2', { nent: 'uint32_t', padding: 'uint32_t' });

export const kvm_lapic_state = struct('kvm_lapic_state', { regs: koffi.array('uint8_t', 1024) });

export const kvm_pit_config = struct('kvm_pit_config', {
  flags: 'uint32_t',
  pad: koffi.array('uint32_t', 15),
});

export const kvm_irqfd = struct('kvm_irqfd', {
  fd: 'uint32_t',
  gsi: 'uint32_t',
  flags: 'uint32_t',
  resamplefd: 'uint32_t',
  pad: koffi.array('uint8_t', 16),
});

export const kvm_ioeventfd = struct('kvm_ioeventfd', {
  datamatch: 'uint64_t',
  addr: 'uint64_t',
  len: 'uint32_t',
  fd: 'int32_t',
  flags: 'uint32_t',
  pad: koffi.array('uint8_t', 36),
});

export const kvm_irq_level = struct('kvm_irq_level', { irq: 'uint32_t', level: 'uint32_t' });

export const kvm_mp_state = struct('kvm_mp_state', { mp_state: 'uint32_t' });

/** Offsets into struct kvm_run (the vCPU's shared page) that the exit loop reads. */
export const KVM_RUN_OFFSETS = {
  request_interrupt_window: 0,
  immediate_exit: 1,
  exit_reason: 8,
  ready_for_interrupt_injection: 12,
  if_flag: 13,
  /** The exit-specific union. */
  exit: 32,
} as const;

export const sizeOf = (t: unknown): number => koffi.sizeof(t as never);
export const offsetOf = (t: unknown, field: string): number => koffi.offsetof(t as never, field);
