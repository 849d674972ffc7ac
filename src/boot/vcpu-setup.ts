import type { CpuidEntry, Segment, Sregs, Vcpu } from '../kvm/kvm';
import type { BootPlan } from './plan';
import { KVM_CPUID_FLAG_SIGNIFCANT_INDEX } from '../kvm/ioctls';
import { GDT_LONG, GDT_PVH } from './structures';
import { FcRunError } from '../errors';

/**
 * Per-vCPU configuration at boot: CPUID (normalized per vCPU), MSRs, FPU, LAPIC interrupt pins,
 * and, on the boot processor, the registers the kernel's entry point expects. Application
 * processors stay in KVM's wait-for-SIPI state: the guest brings them up with INIT/SIPI.
 */

const X86_CR0_PE = 0x1n;
const X86_CR0_ET = 0x10n;
const X86_CR0_PG = 0x80000000n;
const X86_CR4_PAE = 0x20n;
const EFER_LME = 0x100n;
const EFER_LMA = 0x400n;

/** Segment register contents for a GDT descriptor, as the CPU would load them. */
function segmentFromGdt(entry: bigint, selector: number): Segment {
  const base = ((entry >> 16n) & 0xffffffn) | (((entry >> 56n) & 0xffn) << 24n);
  const limitRaw = Number((entry & 0xffffn) | (((entry >> 48n) & 0xfn) << 16n));
  const g = Number((entry >> 55n) & 1n);
  const type = Number((entry >> 40n) & 0xfn);
  const present = Number((entry >> 47n) & 1n);
  return {
    base,
    limit: g ? limitRaw * 4096 + 0xfff : limitRaw,
    selector,
    type,
    present,
    dpl: Number((entry >> 45n) & 3n),
    db: Number((entry >> 54n) & 1n),
    s: Number((entry >> 44n) & 1n),
    l: Number((entry >> 53n) & 1n),
    g,
    avl: Number((entry >> 52n) & 1n),
    unusable: present ? 0 : 1,
    padding: 0,
  };
}

export function bootSregs(current: Sregs, plan: BootPlan): Sregs {
  const pvh = plan.kernel.entryMode === 'pvh32';
  const gdt = pvh ? GDT_PVH : GDT_LONG;
  const code = segmentFromGdt(gdt[1], 0x08);
  const data = segmentFromGdt(gdt[2], 0x10);
  const tss = segmentFromGdt(gdt[3], 0x18);
  const s: Sregs = {
    ...current,
    cs: code,
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    tr: tss,
    gdt: { base: BigInt(plan.boot.gdt), limit: gdt.length * 8 - 1, padding: [0, 0, 0] },
    idt: { base: BigInt(plan.boot.idt), limit: 7, padding: [0, 0, 0] },
  };
  if (pvh) {
    s.cr0 = X86_CR0_PE | X86_CR0_ET;
    s.cr4 = 0n;
    s.efer = 0n;
  } else {
    s.cr0 = BigInt(current.cr0) | X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    s.cr3 = BigInt(plan.boot.pml4);
    s.cr4 = BigInt(current.cr4) | X86_CR4_PAE;
    s.efer = BigInt(current.efer) | EFER_LME | EFER_LMA;
  }
  return s;
}

/** MSRs Linux expects a boot loader to have left at known values. */
export const BOOT_MSRS: { index: number; data: bigint; name: string }[] = [
  { index: 0x174, data: 0n, name: 'IA32_SYSENTER_CS' },
  { index: 0x175, data: 0n, name: 'IA32_SYSENTER_ESP' },
  { index: 0x176, data: 0n, name: 'IA32_SYSENTER_EIP' },
  { index: 0xc0000081, data: 0n, name: 'STAR' },
  { index: 0xc0000082, data: 0n, name: 'LSTAR' },
  { index: 0xc0000083, data: 0n, name: 'CSTAR' },
  { index: 0xc0000084, data: 0n, name: 'SYSCALL_MASK' },
  { index: 0xc0000102, data: 0n, name: 'KERNEL_GS_BASE' },
  { index: 0x10, data: 0n, name: 'IA32_TSC' },
  { index: 0x1a0, data: 1n, name: 'IA32_MISC_ENABLE (fast strings)' },
];

const HYPERVISOR_BIT = 1 << 31;
const HTT_BIT = 1 << 28;
const TSC_DEADLINE_BIT = 1 << 24;

/**
 * KVM's supported CPUID with the TSC-deadline timer shown where KVM emulates it
 * (KVM_CAP_TSC_DEADLINE_TIMER), as Firecracker does: older KVMs leave the bit out of
 * KVM_GET_SUPPORTED_CPUID although the local APIC they emulate has the mode. Without it a Linux
 * guest calibrates its APIC timer against another clock, and where guest code runs slowly (a
 * nested KVM) that check fails and the guest is left without a local timer.
 */
export function withTscDeadline(supported: CpuidEntry[], kvmHasIt: boolean): CpuidEntry[] {
  if (!kvmHasIt) return supported;
  return supported.map((e) => (e.function === 0x1 ? { ...e, ecx: (e.ecx | TSC_DEADLINE_BIT) >>> 0 } : e));
}

function brandString(text: string): number[] {
  const bytes = Buffer.alloc(48);
  bytes.write(text.slice(0, 47), 'latin1');
  const regs: number[] = [];
  for (let i = 0; i < 12; i++) regs.push(bytes.readUInt32LE(i * 4));
  return regs;
}

/**
 * CPUID as one vCPU should see it: KVM's supported leaves, with the APIC id, the logical CPU
 * count and topology of this VM, the hypervisor bit, and the KVM signature leaves.
 */
export function normalizeCpuid(supported: CpuidEntry[], cpuIndex: number, plan: BootPlan): CpuidEntry[] {
  const count = plan.vcpus.count;
  const threadsPerCore = plan.vcpus.smt && count > 1 ? 2 : 1;
  const out = supported.map((e) => ({ ...e }));
  const hostBrand = (() => {
    const regs = [0x80000002, 0x80000003, 0x80000004].flatMap((f) => {
      const e = out.find((x) => x.function === f);
      return e ? [e.eax, e.ebx, e.ecx, e.edx] : [];
    });
    if (regs.length !== 12) return '';
    const b = Buffer.alloc(48);
    regs.forEach((r, i) => b.writeUInt32LE(r >>> 0, i * 4));
    return b.toString('latin1').replace(/\0.*$/s, '').trim();
  })();
  for (const e of out) {
    switch (e.function) {
      case 0x1:
        e.ebx = ((cpuIndex & 0xff) << 24) | ((count & 0xff) << 16) | (e.ebx & 0xffff);
        e.ecx |= HYPERVISOR_BIT;
        if (count > 1) e.edx |= HTT_BIT;
        else e.edx &= ~HTT_BIT;
        break;
      case 0x4: {
        // Deterministic cache parameters: cores per package in EAX[31:26], sharing in EAX[25:14].
        const cacheLevel = (e.eax >>> 5) & 0x7;
        const sharing = cacheLevel >= 3 ? count - 1 : threadsPerCore - 1;
        e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((Math.ceil(count / threadsPerCore) - 1) & 0x3f) << 26);
        break;
      }
      case 0x8000001e:
        // AMD: extended APIC id, then the compute unit (core) id and threads per compute unit.
        e.eax = cpuIndex;
        e.ebx = (e.ebx & ~0xffff) | (((threadsPerCore - 1) & 0xff) << 8) | (Math.floor(cpuIndex / threadsPerCore) & 0xff);
        break;
      default:
        break;
    }
  }
  // Recent KVMs report leaf 0xb with subleaf 0 only (zeroed); the guest needs the core level
  // (subleaf 1) and an invalid level to end the enumeration (subleaf 2).
  if (out.some((e) => e.function === 0xb)) {
    for (const index of [0, 1, 2]) {
      if (out.some((e) => e.function === 0xb && e.index === index)) continue;
      const e: CpuidEntry = { function: 0xb, index, flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX, eax: 0, ebx: 0, ecx: 0, edx: 0 };
      out.push(e);
    }
    const shift0 = threadsPerCore === 2 ? 1 : 0;
    const shift1 = Math.ceil(Math.log2(Math.max(count, 1)));
    for (const e of out.filter((x) => x.function === 0xb)) {
      e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
      if (e.index === 0) [e.eax, e.ebx, e.ecx] = [shift0, threadsPerCore, (1 << 8) | 0];
      else if (e.index === 1) [e.eax, e.ebx, e.ecx] = [shift1, count, (2 << 8) | 1];
      else [e.eax, e.ebx, e.ecx] = [0, 0, e.index & 0xff];
      e.edx = cpuIndex;
    }
  }
  if (!out.some((e) => e.function === 0x40000000)) {
    // "KVMKVMKVM\0\0\0", maximum hypervisor leaf 0x40000001.
    out.push({ function: 0x40000000, index: 0, flags: 0, eax: 0x40000001, ebx: 0x4b4d564b, ecx: 0x564b4d56, edx: 0x4d });
  }
  const brand = brandString(hostBrand || 'fc-run virtual CPU');
  [0x80000002, 0x80000003, 0x80000004].forEach((f, i) => {
    const e = out.find((x) => x.function === f);
    if (e) [e.eax, e.ebx, e.ecx, e.edx] = brand.slice(i * 4, i * 4 + 4);
  });
  return out;
}

const APIC_LVT0 = 0x350;
const APIC_LVT1 = 0x360;
const APIC_MODE_NMI = 0x4;
const APIC_MODE_EXTINT = 0x7;

/** LINT0 delivers the PIC's interrupts (ExtINT), LINT1 NMIs, as a PC's BIOS leaves them. */
export function configureLapic(vcpu: Vcpu): void {
  const state = vcpu.getLapic();
  const set = (reg: number, mode: number) => state.writeUInt32LE((state.readUInt32LE(reg) & ~0x700) | (mode << 8), reg);
  set(APIC_LVT0, APIC_MODE_EXTINT);
  set(APIC_LVT1, APIC_MODE_NMI);
  vcpu.setLapic(state);
}

/** Static templates are planned as the custom template they equal: both apply the same way. */
type CustomTemplate = Extract<BootPlan['cpuTemplate'], { kind: 'custom' | 'static' }>;

/** Forces the bits of `mask` to those of `value`, keeping the others. */
export function applyFilter(current: bigint, filter: { mask: string; value: string }): bigint {
  const mask = BigInt(filter.mask);
  return (current & ~mask) | (BigInt(filter.value) & mask);
}

/**
 * A custom CPU template's CPUID modifiers applied to the vCPU's normalized CPUID. A modifier for
 * a leaf the CPUID does not have is an error: the template was written for another CPU.
 */
export function applyCpuidTemplate(entries: CpuidEntry[], modifiers: CustomTemplate['cpuid']): CpuidEntry[] {
  const out = entries.map((e) => ({ ...e }));
  for (const m of modifiers) {
    const entry = out.find((e) => e.function === m.leaf && (!(e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || e.index === m.subleaf));
    if (!entry) {
      const hex = (n: number) => `0x${n.toString(16)}`;
      throw new FcRunError('cpu-template', `the CPU template modifies CPUID leaf ${hex(m.leaf)} subleaf ${hex(m.subleaf)}, which this host's KVM does not offer`);
    }
    entry[m.register] = Number(applyFilter(BigInt(entry[m.register] >>> 0), m.filter) & 0xffffffffn) >>> 0;
  }
  return out;
}

/** The template's MSR modifiers applied to the values KVM has after the boot MSRs are set. */
function applyMsrTemplate(vcpu: Vcpu, modifiers: CustomTemplate['msr']): void {
  if (modifiers.length === 0) return;
  const addrs = modifiers.map((m) => m.addr);
  let current: bigint[];
  try {
    current = vcpu.getMsrs(addrs);
  } catch (err) {
    throw new FcRunError('cpu-template', `the CPU template modifies an MSR KVM does not support: ${(err as Error).message}`);
  }
  try {
    vcpu.setMsrs(modifiers.map((m, i) => ({ index: m.addr, data: applyFilter(current[i], m.filter) })));
  } catch (err) {
    throw new FcRunError('cpu-template', `KVM refused a value the CPU template sets: ${(err as Error).message}`);
  }
}

/** Configures one vCPU for the plan; the boot processor also gets the entry registers. */
export function configureVcpu(vcpu: Vcpu, plan: BootPlan, supportedCpuid: CpuidEntry[]): void {
  const tpl = plan.cpuTemplate.kind === 'none' ? undefined : plan.cpuTemplate;
  const cpuid = normalizeCpuid(supportedCpuid, vcpu.id, plan);
  vcpu.setCpuid(tpl ? applyCpuidTemplate(cpuid, tpl.cpuid) : cpuid);
  vcpu.setMsrs(BOOT_MSRS);
  if (tpl) applyMsrTemplate(vcpu, tpl.msr);
  const fpu = vcpu.getFpu();
  vcpu.setFpu({ ...fpu, fcw: 0x37f, mxcsr: 0x1f80 });
  configureLapic(vcpu);
  if (vcpu.id !== 0) return;
  vcpu.setSregs(bootSregs(vcpu.getSregs(), plan));
  const regs = vcpu.getRegs();
  const zero = Object.fromEntries(Object.keys(regs).map((k) => [k, 0n])) as typeof regs;
  if (plan.kernel.entryMode === 'pvh32') {
    vcpu.setRegs({ ...zero, rflags: 2n, rip: BigInt(plan.kernel.entry), rbx: BigInt(plan.boot.pvhStartInfo) });
  } else {
    const sp = BigInt(plan.boot.stackPointer);
    vcpu.setRegs({ ...zero, rflags: 2n, rip: BigInt(plan.kernel.entry), rsp: sp, rbp: sp, rsi: BigInt(plan.boot.zeroPage) });
  }
}
