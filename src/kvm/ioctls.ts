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
const ior = (nr: number, t: unknown) => ioc(IOC_READ, nr, sizeOf(t));
const iow = (nr: number, t: unknown) => ioc(IOC_WRITE, nr, sizeOf(t));
const iowr = (nr: number, t: unknown) => ioc(IOC_READ | IOC_WRITE, nr, sizeOf(t));

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
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;
export const KVM_MAX_CPUID_ENTRIES = 256;
