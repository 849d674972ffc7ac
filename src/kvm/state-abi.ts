/**
 * The KVM state a snapshot holds, as the kernel hands it out: each part is the bytes of one
 * <asm/kvm.h> structure, kept opaque (fc-run does not edit guest state, it carries it from
 * KVM_GET_* to KVM_SET_*). Sizes are fixed by the x86_64 ABI; test/unit/kvm-abi.test.ts checks
 * them against the C headers. A snapshot file's reader checks every part's length against these
 * before any of it reaches an ioctl.
 */
export const STATE_SIZES = {
  /** struct kvm_regs */
  regs: 144,
  /** struct kvm_sregs */
  sregs: 312,
  /** struct kvm_xcrs */
  xcrs: 392,
  /** struct kvm_debugregs */
  debugregs: 128,
  /** struct kvm_lapic_state */
  lapic: 1024,
  /** struct kvm_vcpu_events */
  vcpuEvents: 64,
  /** struct kvm_msr_entry (MSRs are saved as a list of these) */
  msrEntry: 16,
  /** struct kvm_cpuid_entry2 (CPUID is saved as a list of these) */
  cpuidEntry: 40,
  /** struct kvm_irqchip: chip id, padding, 512 bytes of PIC or IOAPIC state */
  irqchip: 520,
  /** struct kvm_pit_state2 */
  pit2: 112,
  /** struct kvm_clock_data */
  clock: 48,
} as const;

/** struct kvm_xsave is at least 4 KiB; with KVM_CAP_XSAVE2 (AMX) it is what the capability says. */
export const XSAVE_MIN = 4096;
/** No x86 XSAVE area comes near this; a larger one in a file is refused, not allocated. */
export const XSAVE_MAX = 64 * 1024;
/** KVM_MAX_CPUID_ENTRIES */
export const CPUID_MAX_ENTRIES = 256;
/** More MSRs than any KVM reports (KVM_GET_MSR_INDEX_LIST lists a few hundred). */
export const MSRS_MAX = 2048;

/** KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC: the chips saved, in order. */
export const IRQCHIP_IDS = [0, 1, 2] as const;

/** KVM_MP_STATE_* values KVM accepts back. */
export const MP_STATE_MAX = 8;

/**
 * One vCPU's state. Byte parts are Uint8Array (they cross from the vCPU thread to the main thread
 * by structured clone, which turns a Buffer into a plain Uint8Array).
 */
export interface VcpuState {
  regs: Uint8Array;
  sregs: Uint8Array;
  /** struct kvm_xsave (4 KiB, more with AMX) */
  xsave: Uint8Array;
  xcrs: Uint8Array;
  debugregs: Uint8Array;
  lapic: Uint8Array;
  vcpuEvents: Uint8Array;
  /** kvm_msr_entry × n */
  msrs: Uint8Array;
  /** kvm_cpuid_entry2 × n: the CPUID the vCPU ran with (its template applied) */
  cpuid: Uint8Array;
  /** KVM_MP_STATE_* */
  mpState: number;
  /** The guest's TSC frequency in kHz, 0 when KVM cannot say */
  tscKhz: number;
}

/** The VM-wide state: interrupt controllers, PIT, kvm-clock. */
export interface VmState {
  /** struct kvm_irqchip for PIC master, PIC slave and IOAPIC */
  irqchips: Uint8Array[];
  pit2: Uint8Array;
  clock: Uint8Array;
}

/** The fixed-size byte parts of a VcpuState and their sizes. */
export const VCPU_FIXED_PARTS = {
  regs: STATE_SIZES.regs,
  sregs: STATE_SIZES.sregs,
  xcrs: STATE_SIZES.xcrs,
  debugregs: STATE_SIZES.debugregs,
  lapic: STATE_SIZES.lapic,
  vcpuEvents: STATE_SIZES.vcpuEvents,
} as const;
