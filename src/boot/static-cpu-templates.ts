import type { BitFilter, CustomCpuTemplate, StaticCpuTemplate } from '../config/resolved';

/**
 * Firecracker's x86_64 static CPU templates (machine-config.cpu_template), expressed as the
 * custom templates they are equivalent to, so both go through one code path at launch.
 *
 * The data is transcribed from Firecracker's main branch at commit 81b38b9dad60 (2026-08-21,
 * v1.16.0-dev-617): src/vmm/src/cpu_config/x86_64/static_cpu_templates/{c3,t2,t2s,t2cl,t2a}.rs
 * and their JSON twins in tests/data/custom_cpu_templates/. It matches release v1.16.1 except
 * T2S's IA32_ARCH_CAPABILITIES value, which main extended with FB_CLEAR (bit 17, commit
 * 05d47d0f8, not yet in a release).
 */

export type X86StaticTemplate = Exclude<StaticCpuTemplate, 'None' | 'V1N1'>;

export const X86_STATIC_TEMPLATES: readonly X86StaticTemplate[] = ['C3', 'T2', 'T2S', 'T2CL', 'T2A'];

export type CpuVendor = 'GenuineIntel' | 'AuthenticAMD';

/** A processor as /proc/cpuinfo names it: family and model with their extended fields folded in. */
export interface CpuModel {
  name: string;
  family: number;
  model: number;
  stepping: number;
}

/** The only processors Firecracker lets each template run on (its cpu_model.rs, exact stepping). */
const SKYLAKE: CpuModel = { name: 'Intel Skylake', family: 6, model: 0x55, stepping: 4 };
const CASCADE_LAKE: CpuModel = { name: 'Intel Cascade Lake', family: 6, model: 0x55, stepping: 7 };
const ICE_LAKE: CpuModel = { name: 'Intel Ice Lake', family: 6, model: 0x6a, stepping: 6 };
const MILAN: CpuModel = { name: 'AMD Milan', family: 0x19, model: 0x01, stepping: 1 };

type Register = 'eax' | 'ebx' | 'ecx' | 'edx';
/** leaf, subleaf, KVM flags, register, mask (bits the template decides), value of those bits. */
type CpuidRow = [number, number, number, Register, number, number];
/** MSR address, mask, value. */
type MsrRow = [number, bigint, bigint];

interface TemplateData {
  vendor: CpuVendor;
  models: CpuModel[];
  cpuid: CpuidRow[];
  msr: MsrRow[];
}

const IA32_ARCH_CAPABILITIES = 0x10a;

// Rows every Intel template and T2A share from leaf 0x1 through 0xd; each template adds its own
// extended-leaf rows. C3 differs in leaf 0x1 and 0x7, so it lists all of its rows.
const T2_FAMILY_BASE: CpuidRow[] = [
  [0x1, 0, 0, 'eax', 0x0fff3fff, 0x000306f2],
  [0x1, 0, 0, 'ecx', 0x0004cdfc, 0x00000000],
  [0x1, 0, 0, 'edx', 0xe8641080, 0x00001080],
  [0x7, 0, 1, 'ebx', 0xffefda14, 0x00000200],
  [0x7, 0, 1, 'ecx', 0x40415f5e, 0x00000000],
  [0x7, 0, 1, 'edx', 0x0000011c, 0x00000000],
  [0xd, 0, 1, 'eax', 0x000002f8, 0x00000000],
  [0xd, 1, 1, 'eax', 0x0000000e, 0x00000000],
];

const T2_EXTENDED: CpuidRow[] = [
  [0x80000001, 0, 0, 'ecx', 0x20000100, 0x00000000],
  [0x80000001, 0, 0, 'edx', 0x04000000, 0x00000000],
  [0x80000008, 0, 0, 'ebx', 0x00000200, 0x00000000],
];

const DATA: Record<X86StaticTemplate, TemplateData> = {
  C3: {
    vendor: 'GenuineIntel',
    models: [SKYLAKE, CASCADE_LAKE, ICE_LAKE],
    cpuid: [
      [0x1, 0, 0, 'eax', 0x0fff3fff, 0x000306e4],
      [0x1, 0, 0, 'ecx', 0x0040dd3c, 0x00000000],
      [0x1, 0, 0, 'edx', 0xa8641080, 0x00001080],
      [0x7, 0, 1, 'ebx', 0xffafdd3c, 0x00000000],
      [0x7, 0, 1, 'ecx', 0x4041481e, 0x00000000],
      [0x7, 0, 1, 'edx', 0x0000000c, 0x00000000],
      [0xd, 0, 1, 'eax', 0x000002f8, 0x00000000],
      [0xd, 1, 1, 'eax', 0x0000000e, 0x00000000],
      [0x80000001, 0, 0, 'ecx', 0x00000120, 0x00000000],
      [0x80000001, 0, 0, 'edx', 0x04000000, 0x00000000],
    ],
    msr: [],
  },
  T2: { vendor: 'GenuineIntel', models: [SKYLAKE, CASCADE_LAKE, ICE_LAKE], cpuid: [...T2_FAMILY_BASE, ...T2_EXTENDED], msr: [] },
  T2S: {
    vendor: 'GenuineIntel',
    models: [SKYLAKE, CASCADE_LAKE],
    cpuid: [...T2_FAMILY_BASE, ...T2_EXTENDED],
    // Every bit fixed: the guest sees the same mitigation flags on Skylake and Cascade Lake.
    msr: [[IA32_ARCH_CAPABILITIES, 0xffffffffffffffffn, 0x000000000c0a0c4cn]],
  },
  T2CL: {
    vendor: 'GenuineIntel',
    models: [CASCADE_LAKE, ICE_LAKE],
    cpuid: [
      ...T2_FAMILY_BASE,
      [0x80000001, 0, 0, 'ecx', 0x200001c0, 0x00000000],
      [0x80000001, 0, 0, 'edx', 0x07c00000, 0x00000000],
      [0x80000008, 0, 0, 'ebx', 0x00000200, 0x00000000],
    ],
    // Clears the control bits; the mitigation bits KVM can pass through are left as KVM has them.
    msr: [[IA32_ARCH_CAPABILITIES, 0xffffffffe2f51e00n, 0x0000000000000000n]],
  },
  T2A: {
    vendor: 'AuthenticAMD',
    models: [MILAN],
    cpuid: [
      ...T2_FAMILY_BASE,
      [0x80000001, 0, 0, 'ecx', 0x200001c4, 0x00000000],
      [0x80000001, 0, 0, 'edx', 0x06400000, 0x00000000],
      [0x80000008, 0, 0, 'ebx', 0x001c0205, 0x001c0004],
    ],
    msr: [],
  },
};

const hex = (n: bigint, bits: 32 | 64): string => '0x' + n.toString(16).padStart(bits / 4, '0');
const filter = (mask: bigint, value: bigint, bits: 32 | 64): BitFilter => ({ mask: hex(mask, bits), value: hex(value, bits) });

export function isX86StaticTemplate(name: StaticCpuTemplate): name is X86StaticTemplate {
  return (X86_STATIC_TEMPLATES as readonly string[]).includes(name);
}

/** The vendor a static template is written for; running it on another vendor is refused. */
export function templateVendor(name: X86StaticTemplate): CpuVendor {
  return DATA[name].vendor;
}

export function templateModels(name: X86StaticTemplate): CpuModel[] {
  return DATA[name].models.map((m) => ({ ...m }));
}

/** The static template as the custom template it is equivalent to (same shape as cpu-config's). */
export function staticCpuTemplate(name: X86StaticTemplate): CustomCpuTemplate {
  const d = DATA[name];
  return {
    source: `static:${name}`,
    kvm_capabilities: [],
    cpuid: d.cpuid.map(([leaf, subleaf, flags, register, mask, value]) => ({ leaf, subleaf, flags, register, filter: filter(BigInt(mask), BigInt(value), 32) })),
    msr: d.msr.map(([addr, mask, value]) => ({ addr, filter: filter(mask, value, 64) })),
  };
}
