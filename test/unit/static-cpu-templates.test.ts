import * as fs from 'node:fs';
import * as path from 'node:path';
import { hostIssues, planSpec } from '../../src/boot';
import { assertCpuTemplateFitsHost, cpuTemplateHostProblem, HostCpu, parseCpuinfo, readHostCpu, vendorFromCpuid } from '../../src/boot/host-cpu';
import { FcRunError } from '../../src/errors';
import { staticCpuTemplate, X86_STATIC_TEMPLATES, X86StaticTemplate } from '../../src/boot/static-cpu-templates';
import { applyCpuidTemplate, applyFilter } from '../../src/boot/vcpu-setup';
import type { CpuidEntry } from '../../src/kvm/kvm';
import { tinyPvh } from '../helpers/images';
import { load, Workspace } from '../helpers/specs';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures', 'firecracker');

let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
  ws.write('pvh.elf', tinyPvh());
});
afterAll(() => ws.remove());

/**
 * The masks, written a second way: bit numbers by feature, as Firecracker's static template
 * sources list them (src/vmm/src/cpu_config/x86_64/static_cpu_templates/*.rs at 81b38b9dad60).
 * `fixed` bits are decided by the template, `set` the ones of them forced to 1.
 */
interface Expected {
  leaf: number;
  subleaf: number;
  flags: number;
  register: 'eax' | 'ebx' | 'ecx' | 'edx';
  fixed: number[];
  set?: number[];
}

const range = (lo: number, hi: number) => Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
/** Leaf 0x1 EAX: stepping, model, family, processor type, extended model and family (bits 0-13, 16-27). */
const SIGNATURE_BITS = [...range(0, 13), ...range(16, 27)];
const signatureBits = (sig: number) => SIGNATURE_BITS.filter((b) => (sig >>> b) & 1);

const T2_BASE: Expected[] = [
  // Haswell-EP signature: family 6, extended model 3, model 0xf, stepping 2.
  { leaf: 0x1, subleaf: 0, flags: 0, register: 'eax', fixed: SIGNATURE_BITS, set: signatureBits(0x306f2) },
  // DTES64, MONITOR, DS-CPL, VMX, SMX, EIST, TM2, CNXT-ID, SDBG, xTPR, PDCM, DCA
  { leaf: 0x1, subleaf: 0, flags: 0, register: 'ecx', fixed: [2, 3, 4, 5, 6, 7, 8, 10, 11, 14, 15, 18] },
  // MCE and MTRR on; PSN, DS, ACPI, SS, TM, IA-64, PBE off
  { leaf: 0x1, subleaf: 0, flags: 0, register: 'edx', fixed: [7, 12, 18, 21, 22, 27, 29, 30, 31], set: [7, 12] },
  // ERMS on; SGX, HLE, RTM, RDT-M, MPX, RDT-A, AVX512*, RDSEED, ADX, PCOMMIT, CLFLUSHOPT, CLWB, PT, SHA off
  { leaf: 0x7, subleaf: 0, flags: 1, register: 'ebx', fixed: [2, 4, 9, 11, 12, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31], set: [9] },
  // AVX512_VBMI, UMIP, PKU, OSPKE, VBMI2, GFNI, VAES, VPCLMULQDQ, VNNI, BITALG, VPOPCNTDQ, LA57, RDPID, SGX_LC
  { leaf: 0x7, subleaf: 0, flags: 1, register: 'ecx', fixed: [1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 14, 16, 22, 30] },
  // AVX512_4VNNIW, AVX512_4FMAPS, FSRM, AVX512_VP2INTERSECT
  { leaf: 0x7, subleaf: 0, flags: 1, register: 'edx', fixed: [2, 3, 4, 8] },
  // MPX, AVX-512 and PKRU state components
  { leaf: 0xd, subleaf: 0, flags: 1, register: 'eax', fixed: [3, 4, 5, 6, 7, 9] },
  // XSAVEC, XGETBV with ECX=1, XSAVES
  { leaf: 0xd, subleaf: 1, flags: 1, register: 'eax', fixed: [1, 2, 3] },
];

const EXPECTED: Record<X86StaticTemplate, { cpuid: Expected[]; msr: { addr: number; fixed: number[]; set?: number[] }[] }> = {
  C3: {
    cpuid: [
      // Ivy Bridge-EP signature: family 6, extended model 3, model 0xe, stepping 4.
      { leaf: 0x1, subleaf: 0, flags: 0, register: 'eax', fixed: SIGNATURE_BITS, set: signatureBits(0x306e4) },
      // DTES64, MONITOR, DS-CPL, VMX, TM2, CNXT-ID, SDBG, FMA, xTPR, PDCM, MOVBE
      { leaf: 0x1, subleaf: 0, flags: 0, register: 'ecx', fixed: [2, 3, 4, 5, 8, 10, 11, 12, 14, 15, 22] },
      { leaf: 0x1, subleaf: 0, flags: 0, register: 'edx', fixed: [7, 12, 18, 21, 22, 27, 29, 31], set: [7, 12] },
      // SGX, BMI1, HLE, AVX2, BMI2, INVPCID, RTM, RDT-M, MPX, RDT-A, AVX512F/DQ, RDSEED, ADX, IFMA, CLFLUSHOPT, CLWB, PT, PF, ER, CD, SHA, BW, VL
      { leaf: 0x7, subleaf: 0, flags: 1, register: 'ebx', fixed: [2, 3, 4, 5, 8, 10, 11, 12, 14, 15, 16, 17, 18, 19, 21, 23, 24, 25, 26, 27, 28, 29, 30, 31] },
      // AVX512_VBMI, UMIP, PKU, OSPKE, VNNI, VPOPCNTDQ, LA57, RDPID, SGX_LC
      { leaf: 0x7, subleaf: 0, flags: 1, register: 'ecx', fixed: [1, 2, 3, 4, 11, 14, 16, 22, 30] },
      { leaf: 0x7, subleaf: 0, flags: 1, register: 'edx', fixed: [2, 3] },
      { leaf: 0xd, subleaf: 0, flags: 1, register: 'eax', fixed: [3, 4, 5, 6, 7, 9] },
      { leaf: 0xd, subleaf: 1, flags: 1, register: 'eax', fixed: [1, 2, 3] },
      // LZCNT, PREFETCHW
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'ecx', fixed: [5, 8] },
      // 1-GByte pages
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'edx', fixed: [26] },
    ],
    msr: [],
  },
  T2: {
    cpuid: [
      ...T2_BASE,
      // PREFETCHW, MONITORX
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'ecx', fixed: [8, 29] },
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'edx', fixed: [26] },
      // WBNOINVD
      { leaf: 0x80000008, subleaf: 0, flags: 0, register: 'ebx', fixed: [9] },
    ],
    msr: [],
  },
  T2S: {
    cpuid: [
      ...T2_BASE,
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'ecx', fixed: [8, 29] },
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'edx', fixed: [26] },
      { leaf: 0x80000008, subleaf: 0, flags: 0, register: 'ebx', fixed: [9] },
    ],
    // IA32_ARCH_CAPABILITIES, all 64 bits: RSBA, SKIP_L1DFL_VMENTRY, IF_PSCHANGE_MC_NO,
    // MISC_PACKAGE_CTLS, ENERGY_FILTERING_CTL, FB_CLEAR, RRSBA, GDS_NO, RFDS_NO set.
    msr: [{ addr: 0x10a, fixed: range(0, 63), set: [2, 3, 6, 10, 11, 17, 19, 26, 27] }],
  },
  T2CL: {
    cpuid: [
      ...T2_BASE,
      // SSE4A, MisAlignSse, PREFETCHW, MONITORX
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'ecx', fixed: [6, 7, 8, 29] },
      // MmxExt, MMX, FXSR, FFXSR, 1-GByte pages
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'edx', fixed: [22, 23, 24, 25, 26] },
      { leaf: 0x80000008, subleaf: 0, flags: 0, register: 'ebx', fixed: [9] },
    ],
    // Control and reserved bits cleared; the mitigation bits (0-8, 13-15, 17, 19, 24, 26-28) pass through.
    msr: [{ addr: 0x10a, fixed: [9, 10, 11, 12, 16, 18, 20, 21, 22, 23, 25, ...range(29, 63)] }],
  },
  T2A: {
    cpuid: [
      ...T2_BASE,
      // SVM, SSE4A, MisAlignSse, 3DNowPrefetch, MONITORX
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'ecx', fixed: [2, 6, 7, 8, 29] },
      // MmxExt, FFXSR, Page1GB
      { leaf: 0x80000001, subleaf: 0, flags: 0, register: 'edx', fixed: [22, 25, 26] },
      // CLZERO, WBNOINVD off; RstrFpErrPtrs, IbrsPreferred, IbrsSameMode, EferLmsleUnsupported on
      { leaf: 0x80000008, subleaf: 0, flags: 0, register: 'ebx', fixed: [0, 2, 9, 18, 19, 20], set: [2, 18, 19, 20] },
    ],
    msr: [],
  },
};

const bitsOf = (bits: number[] = []) => bits.reduce((n, b) => n | (1n << BigInt(b)), 0n);
const hex = (n: bigint, width: number) => '0x' + n.toString(16).padStart(width, '0');

describe('the static templates carry Firecracker\'s masks', () => {
  test.each(X86_STATIC_TEMPLATES)('%s: CPUID and MSR modifiers, bit for bit and in Firecracker\'s order', (name) => {
    const tpl = staticCpuTemplate(name);
    const want = EXPECTED[name];
    expect(tpl.cpuid).toEqual(
      want.cpuid.map((e) => ({ leaf: e.leaf, subleaf: e.subleaf, flags: e.flags, register: e.register, filter: { mask: hex(bitsOf(e.fixed), 8), value: hex(bitsOf(e.set), 8) } })),
    );
    expect(tpl.msr).toEqual(want.msr.map((m) => ({ addr: m.addr, filter: { mask: hex(bitsOf(m.fixed), 16), value: hex(bitsOf(m.set), 16) } })));
    expect(tpl.kvm_capabilities).toEqual([]);
  });

  test('the processor signatures decode to the instance families the templates mimic', () => {
    const sig = (name: X86StaticTemplate) => Number(BigInt(staticCpuTemplate(name).cpuid[0].filter.value));
    const decode = (eax: number) => ({ family: (eax >> 8) & 0xf, model: (((eax >> 16) & 0xf) << 4) | ((eax >> 4) & 0xf), stepping: eax & 0xf });
    expect(decode(sig('C3'))).toEqual({ family: 6, model: 0x3e, stepping: 4 }); // Ivy Bridge-EP (AWS C3)
    for (const t of ['T2', 'T2S', 'T2CL', 'T2A'] as const) expect(decode(sig(t))).toEqual({ family: 6, model: 0x3f, stepping: 2 }); // Haswell-EP (AWS T2)
  });
});

/** Every leaf the templates touch, with each register all ones (a) or all zeros (b). */
function sampleCpuid(fill: number): CpuidEntry[] {
  const keys: [number, number, number][] = [[0x1, 0, 0], [0x7, 0, 1], [0xd, 0, 1], [0xd, 1, 1], [0x80000001, 0, 0], [0x80000008, 0, 0]];
  return keys.map(([fn, index, flags]) => ({ function: fn, index, flags, eax: fill, ebx: fill, ecx: fill, edx: fill }));
}

describe('cpu_template "X" and the equivalent cpu-config are the same thing', () => {
  const planned = (spec: unknown) => planSpec(load(ws, spec)).plan.cpuTemplate;
  const machine = { vcpu_count: 1, mem_size_mib: 64 };

  test.each(X86_STATIC_TEMPLATES)('%s: the plan carries the same modifiers, and they give the same CPUID and MSR values', (name) => {
    const fixture = path.join(FIXTURES, 'cpu-templates', `${name}.json`);
    const stat = planned({ 'boot-source': { kernel_image_path: 'pvh.elf' }, 'machine-config': { ...machine, cpu_template: name } });
    const custom = planned({ 'boot-source': { kernel_image_path: 'pvh.elf' }, 'machine-config': machine, 'cpu-config': fixture });
    const inline = planned({ 'boot-source': { kernel_image_path: 'pvh.elf' }, 'machine-config': machine, 'cpu-config': JSON.parse(fs.readFileSync(fixture, 'utf8')) });
    if (stat.kind !== 'static' || custom.kind !== 'custom' || inline.kind !== 'custom') throw new Error(`unexpected template kinds ${stat.kind}/${custom.kind}/${inline.kind}`);
    expect(stat.name).toBe(name);
    expect(custom.source).toBe(fixture);
    expect(stat.cpuid).toEqual(custom.cpuid);
    expect(stat.msr).toEqual(custom.msr);
    expect(inline.cpuid).toEqual(custom.cpuid);

    for (const fill of [0xffffffff, 0]) {
      const fromStatic = applyCpuidTemplate(sampleCpuid(fill), stat.cpuid);
      expect(fromStatic).toEqual(applyCpuidTemplate(sampleCpuid(fill), custom.cpuid));
      // Independently of the plan: each fixed bit took the template's value, the rest kept the input's.
      for (const e of EXPECTED[name].cpuid) {
        const entry = fromStatic.find((x) => x.function === e.leaf && x.index === e.subleaf)!;
        const fixed = Number(bitsOf(e.fixed));
        expect((entry[e.register] & ~fixed) >>> 0).toBe((fill & ~fixed) >>> 0);
        expect((entry[e.register] & fixed) >>> 0).toBe(Number(bitsOf(e.set)));
      }
    }
    for (const before of [0n, 0xffffffffffffffffn, 0x1234_5678_9abc_def0n]) {
      expect(stat.msr.map((m) => applyFilter(before, m.filter))).toEqual(custom.msr.map((m) => applyFilter(before, m.filter)));
    }
  });

  test('T2S shows the guest one IA32_ARCH_CAPABILITIES value whatever the host had; T2CL passes the mitigation bits through', () => {
    const [t2s] = staticCpuTemplate('T2S').msr;
    expect(applyFilter(0n, t2s.filter)).toBe(0x0c0a0c4cn);
    expect(applyFilter(0xffffffffffffffffn, t2s.filter)).toBe(0x0c0a0c4cn);
    const [t2cl] = staticCpuTemplate('T2CL').msr;
    expect(applyFilter(0xffffffffffffffffn, t2cl.filter)).toBe(0x1d0ae1ffn);
  });

  test('with both, the custom template wins and cpu_template is reported as unused (as in Firecracker)', () => {
    const fixture = path.join(FIXTURES, 'cpu-templates', 'T2.json');
    const loaded = load(ws, { 'boot-source': { kernel_image_path: 'pvh.elf' }, 'machine-config': { ...machine, cpu_template: 'T2A' }, 'cpu-config': fixture });
    const p = planSpec(loaded);
    expect(p.plan.cpuTemplate.kind).toBe('custom');
    expect(p.allWarnings.map((w) => `${w.code} @ ${w.path.join('/')}`)).toEqual(['cpu-template-overridden @ machine-config/cpu_template']);
    // The unused static template puts no demand on the host either.
    expect(hostIssues(loaded, INTEL_CASCADE_LAKE)).toEqual([]);
  });
});

const INTEL_SKYLAKE: HostCpu = { vendor: 'GenuineIntel', family: 6, model: 0x55, stepping: 4 };
const INTEL_CASCADE_LAKE: HostCpu = { vendor: 'GenuineIntel', family: 6, model: 0x55, stepping: 7, modelName: 'Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz' };
const INTEL_ICE_LAKE: HostCpu = { vendor: 'GenuineIntel', family: 6, model: 0x6a, stepping: 6 };
const INTEL_SAPPHIRE_RAPIDS: HostCpu = { vendor: 'GenuineIntel', family: 6, model: 0x8f, stepping: 8 };
const AMD_MILAN: HostCpu = { vendor: 'AuthenticAMD', family: 25, model: 1, stepping: 1 };
const AMD_TURIN: HostCpu = { vendor: 'AuthenticAMD', family: 26, model: 2, stepping: 1, modelName: 'AMD EPYC' };
const HOSTS = [INTEL_SKYLAKE, INTEL_CASCADE_LAKE, INTEL_ICE_LAKE, INTEL_SAPPHIRE_RAPIDS, AMD_MILAN, AMD_TURIN];

describe('the host must be the CPU a static template was made for', () => {
  test('another vendor is refused, naming the template and the host vendor', () => {
    expect(cpuTemplateHostProblem('T2A', INTEL_CASCADE_LAKE)).toEqual({
      code: 'cpu-template-vendor',
      message: 'cpu_template T2A needs an AMD host; this host is GenuineIntel',
      hint: 'use "C3", "T2", "T2S", "T2CL", "None", or a custom template in "cpu-config", which has no host restriction',
    });
    for (const t of ['C3', 'T2', 'T2S', 'T2CL'] as const) {
      expect(cpuTemplateHostProblem(t, AMD_MILAN)?.message).toBe(`cpu_template ${t} needs an Intel host; this host is AuthenticAMD`);
    }
  });

  test('the right vendor but another processor is refused, as Firecracker does', () => {
    expect(cpuTemplateHostProblem('T2CL', INTEL_SKYLAKE)).toEqual({
      code: 'cpu-template-model',
      message: 'cpu_template T2CL runs only on Intel Cascade Lake (family 6 model 0x55 stepping 7), Intel Ice Lake (family 6 model 0x6a stepping 6); this host is family 6 model 0x55 stepping 4',
      hint: 'use "C3", "T2", "T2S", "None", or a custom template in "cpu-config", which has no host restriction',
    });
    expect(cpuTemplateHostProblem('T2S', INTEL_ICE_LAKE)?.code).toBe('cpu-template-model');
    expect(cpuTemplateHostProblem('T2A', AMD_TURIN)?.message).toBe('cpu_template T2A runs only on AMD Milan (family 25 model 0x1 stepping 1); this host is family 26 model 0x2 stepping 1, AMD EPYC');
    expect(cpuTemplateHostProblem('T2', INTEL_SAPPHIRE_RAPIDS)?.hint).toBe('use "None", or a custom template in "cpu-config", which has no host restriction');
  });

  test('each template runs on exactly the processors Firecracker lists for it', () => {
    const fits = (h: HostCpu) => X86_STATIC_TEMPLATES.filter((t) => cpuTemplateHostProblem(t, h) === undefined);
    expect(HOSTS.map(fits)).toEqual([['C3', 'T2', 'T2S'], ['C3', 'T2', 'T2S', 'T2CL'], ['C3', 'T2', 'T2CL'], [], ['T2A'], []]);
  });

  test('a hint never recommends a template that the same host would refuse', () => {
    for (const host of HOSTS) {
      for (const t of X86_STATIC_TEMPLATES) {
        const problem = cpuTemplateHostProblem(t, host);
        if (!problem) continue;
        const named = [...problem.hint.matchAll(/"([A-Z0-9]+)"/g)].map((m) => m[1]).filter((n) => n !== 'None');
        for (const n of named) expect([t, n, cpuTemplateHostProblem(n as X86StaticTemplate, host)]).toEqual([t, n, undefined]);
      }
    }
  });

  test('/proc/cpuinfo gives vendor, family, model and stepping (this host\'s too)', () => {
    const text = 'processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz\nstepping\t: 7\n\nprocessor\t: 1\nvendor_id\t: Other\n';
    expect(parseCpuinfo(text)).toEqual(INTEL_CASCADE_LAKE);
    expect(parseCpuinfo('processor\t: 0\nvendor_id\t: GenuineIntel\n')).toBeUndefined();
    const host = readHostCpu();
    expect(['GenuineIntel', 'AuthenticAMD']).toContain(host.vendor);
    expect(Number.isInteger(host.family) && Number.isInteger(host.model) && Number.isInteger(host.stepping)).toBe(true);
  });

  test('hostIssues locates the refusal at machine-config.cpu_template in the spec file', () => {
    const text = '{\n  "boot-source": { "kernel_image_path": "pvh.elf" },\n  "machine-config": { "vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2A" }\n}\n';
    const loaded = load(ws, text, {}, 'vendor.json');
    expect(hostIssues(loaded, INTEL_ICE_LAKE)).toEqual([
      expect.objectContaining({ severity: 'error', code: 'cpu-template-vendor', path: ['machine-config', 'cpu_template'], line: 3, column: 76, message: 'cpu_template T2A needs an AMD host; this host is GenuineIntel' }),
    ]);
    expect(hostIssues(loaded, AMD_MILAN)).toEqual([]);
  });

  test('launch\'s check: a static template on the wrong host is an exit-2 error; none and custom templates pass anywhere', () => {
    const stat = planSpec(load(ws, { 'boot-source': { kernel_image_path: 'pvh.elf' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 64, cpu_template: 'C3' } })).plan.cpuTemplate;
    let err: unknown;
    try {
      assertCpuTemplateFitsHost(stat, AMD_MILAN);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FcRunError);
    expect(err).toMatchObject({ code: 'cpu-template-vendor', exitCode: 2, message: 'cpu_template C3 needs an Intel host; this host is AuthenticAMD; use "T2A", "None", or a custom template in "cpu-config", which has no host restriction' });
    expect(() => assertCpuTemplateFitsHost(stat, INTEL_ICE_LAKE)).not.toThrow();
    expect(() => assertCpuTemplateFitsHost({ kind: 'none' }, AMD_TURIN)).not.toThrow();
  });

  test('the vendor KVM reports is read from CPUID leaf 0 (EBX, EDX, ECX)', () => {
    const leaf0 = (b: number, d: number, c: number): CpuidEntry[] => [{ function: 0, index: 0, flags: 0, eax: 0x1f, ebx: b, ecx: c, edx: d }];
    expect(vendorFromCpuid(leaf0(0x756e6547, 0x49656e69, 0x6c65746e))).toBe('GenuineIntel');
    expect(vendorFromCpuid(leaf0(0x68747541, 0x69746e65, 0x444d4163))).toBe('AuthenticAMD');
    expect(vendorFromCpuid([])).toBeUndefined();
  });
});
