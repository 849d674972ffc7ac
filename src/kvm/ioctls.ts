import {
  kvm_cpuid2,
  kvm_fpu,
  kvm_ioeventfd,
  kvm_irq_level,
  kvm_irqfd,
  kvm_lapic_state,
  kvm_mp_state,
  kvm_msrs,
  kvm_pit_config,
  kvm_regs,
  kvm_sregs,
  kvm_userspace_memory_region,
  sizeOf,
  StructType,
} from './structs';

/** Linux's _IOC encoding: direction in bits 30-31, size in 16-29, type in 8-15, number in 0-7. */
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
const KVMIO = 0xae;

function ioc(dir: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
}
const io = (nr: number) => ioc(IOC_NONE, nr, 0);
const ior = (nr: number, t: StructType) => ioc(IOC_READ, nr, sizeOf(t));
const iow = (nr: number, t: StructType) => ioc(IOC_WRITE, nr, sizeOf(t));
const iowr = (nr: number, t: StructType) => ioc(IOC_READ | IOC_WRITE, nr, sizeOf(t));
/** For the state structures (src/kvm/state-abi.ts), whose sizes are fixed by the ABI. */
const iorN = (nr: number, size: number) => ioc(IOC_READ, nr, size);
const iowN = (nr: number, size: number) => ioc(IOC_WRITE, nr, size);
const iowrN = (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, nr, size);

/** Request numbers, named as in <linux/kvm.h>; sizes come from the declared structs. */
export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, kvm_cpuid2),
  CREATE_VCPU: io(0x41),
  SET_USER_MEMORY_REGION: iow(0x46, kvm_userspace_memory_region),
  SET_TSS_ADDR: io(0x47),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, kvm_irq_level),
  IRQFD: iow(0x76, kvm_irqfd),
  CREATE_PIT2: iow(0x77, kvm_pit_config),
  IOEVENTFD: iow(0x79, kvm_ioeventfd),
  RUN: io(0x80),
  GET_REGS: ior(0x81, kvm_regs),
  SET_REGS: iow(0x82, kvm_regs),
  GET_SREGS: ior(0x83, kvm_sregs),
  SET_SREGS: iow(0x84, kvm_sregs),
  GET_MSRS: iowr(0x88, kvm_msrs),
  SET_MSRS: iow(0x89, kvm_msrs),
  GET_FPU: ior(0x8c, kvm_fpu),
  SET_FPU: iow(0x8d, kvm_fpu),
  GET_LAPIC: ior(0x8e, kvm_lapic_state),
  SET_LAPIC: iow(0x8f, kvm_lapic_state),
  SET_CPUID2: iow(0x90, kvm_cpuid2),
  GET_CPUID2: iowr(0x91, kvm_cpuid2),
  GET_MP_STATE: ior(0x98, kvm_mp_state),
  SET_MP_STATE: iow(0x99, kvm_mp_state),
  // Snapshot state (sizes from <linux/kvm.h>, <asm/kvm.h>; see state-abi.ts).
  GET_MSR_INDEX_LIST: iowrN(0x02, 4),
  GET_DIRTY_LOG: iowN(0x42, 16),
  GET_IRQCHIP: iowrN(0x62, 520),
  SET_IRQCHIP: iorN(0x63, 520),
  SET_CLOCK: iowN(0x7b, 48),
  GET_CLOCK: iorN(0x7c, 48),
  GET_PIT2: iorN(0x9f, 112),
  SET_PIT2: iowN(0xa0, 112),
  GET_VCPU_EVENTS: iorN(0x9f, 64),
  SET_VCPU_EVENTS: iowN(0xa0, 64),
  GET_DEBUGREGS: iorN(0xa1, 128),
  SET_DEBUGREGS: iowN(0xa2, 128),
  SET_TSC_KHZ: io(0xa2),
  GET_TSC_KHZ: io(0xa3),
  GET_XSAVE: iorN(0xa4, 4096),
  SET_XSAVE: iowN(0xa5, 4096),
  GET_XCRS: iorN(0xa6, 392),
  SET_XCRS: iowN(0xa7, 392),
  GET_XSAVE2: iorN(0xcf, 4096),
} as const;

export type KvmIoctl = keyof typeof KVM;

/** KVM_CHECK_EXTENSION capabilities fc-run relies on. */
export const KVM_CAP = {
  IRQCHIP: 0,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  PIT2: 33,
  IRQFD: 32,
  IOEVENTFD: 36,
  NR_VCPUS: 9,
  MAX_VCPUS: 66,
  VCPU_EVENTS: 41,
  DEBUGREGS: 50,
  XSAVE: 55,
  XCRS: 56,
  TSC_CONTROL: 60,
  GET_TSC_KHZ: 61,
  ADJUST_CLOCK: 39,
  TSC_DEADLINE_TIMER: 72,
  XSAVE2: 208,
} as const;

export const KVM_EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

export const KVM_EXIT_NAMES: Record<number, string> = Object.fromEntries(Object.entries(KVM_EXIT).map(([k, v]) => [v, k.toLowerCase()]));

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;
export const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
export const KVM_SYSTEM_EVENT_RESET = 2;
export const KVM_SYSTEM_EVENT_CRASH = 3;
export const KVM_PIT_SPEAKER_DUMMY = 1;
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;
export const KVM_MAX_CPUID_ENTRIES = 256;
