import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { planSpec } from '../../src/boot';
import type { BootPlan } from '../../src/boot';
import { cpuTemplateHostProblem, readHostCpu } from '../../src/boot/host-cpu';
import { X86_STATIC_TEMPLATES, X86StaticTemplate } from '../../src/boot/static-cpu-templates';
import { configureVcpu } from '../../src/boot/vcpu-setup';
import { loadSpecFile } from '../../src/config/validate';
import { KVM_CPUID_FLAG_SIGNIFCANT_INDEX } from '../../src/kvm/ioctls';
import { CpuidEntry, Kvm } from '../../src/kvm/kvm';
import { sys } from '../../src/kvm/libc';
import { Workspace } from '../helpers/specs';

/**
 * Static CPU templates on real KVM. On this project's machines KVM is emulated and the guest sees
 * the host's standard CPUID leaves whatever KVM_SET_CPUID2 says, so what KVM was given is read
 * back with KVM_GET_CPUID2 and KVM_GET_MSRS; the probe guest then proves each template boots.
 * These tests skip only where /dev/kvm is absent.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const FIXTURES = path.join(ROOT, 'test', 'fixtures', 'firecracker');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: CPU template KVM tests need /dev/kvm, which this host does not have');

const IA32_ARCH_CAPABILITIES = 0x10a;
const INTEL_TEMPLATES = ['C3', 'T2', 'T2S', 'T2CL'] as const;

function fcRun(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' }, timeout: 180_000 });
  return { code: r.status, out: r.stdout.replace(/\r/g, ''), err: r.stderr };
}

let ws: Workspace;
beforeAll(() => {
  if (hasKvm && !fs.existsSync(PROBE)) throw new Error(`${PROBE} is missing: run \`npm run build:probe\` (npm test does)`);
  ws = new Workspace();
});
afterAll(() => ws.remove());

const planOf = (spec: string): BootPlan => planSpec(loadSpecFile(spec)).plan;

/** Configures every vCPU of the plan exactly as launch does, then reads back what KVM holds. */
function configureAndReadBack(plan: BootPlan) {
  const kvm = new Kvm();
  const vm = kvm.createVm();
  const fds: number[] = [vm.fd];
  try {
    vm.setTssAddr(0xfffbd000);
    vm.createIrqchip();
    const supported = kvm.supportedCpuid();
    return Array.from({ length: plan.vcpus.count }, (_, i) => {
      const vcpu = vm.createVcpu(i);
      fds.push(vcpu.fd);
      // What fc-run hands KVM_SET_CPUID2, for a KVM that does not report it back as given.
      let given: CpuidEntry[] = [];
      const set = vcpu.setCpuid.bind(vcpu);
      vcpu.setCpuid = (entries: CpuidEntry[]) => {
        given = entries;
        set(entries);
      };
      configureVcpu(vcpu, plan, supported);
      const cpuid = vcpu.getCpuid();
      return { cpuid: kvmEchoesCpuid ? cpuid : given, archCapabilities: vcpu.getMsrs([IA32_ARCH_CAPABILITIES])[0] };
    });
  } finally {
    for (const fd of fds.reverse()) sys.close(fd);
    kvm.close();
  }
}

function entryFor(entries: CpuidEntry[], leaf: number, subleaf: number): CpuidEntry {
  const e = entries.find((x) => x.function === leaf && (!(x.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || x.index === subleaf));
  if (!e) throw new Error(`KVM_GET_CPUID2 has no leaf 0x${leaf.toString(16)}.${subleaf}`);
  return e;
}

/**
 * Whether KVM_GET_CPUID2 returns what KVM_SET_CPUID2 was given (leaf 1, with bits the host has
 * cleared). Hardware KVM does; the instruction-emulating KVM of some hosts answers with its own
 * CPUID, and there the test checks what fc-run gives KVM_SET_CPUID2 instead.
 */
let kvmEchoesCpuid = true;
function probeCpuidEcho(): boolean {
  const kvm = new Kvm();
  const vm = kvm.createVm();
  const vcpu = vm.createVcpu(0);
  try {
    const entries = kvm.supportedCpuid().map((e) => (e.function === 1 ? { ...e, ecx: (e.ecx & ~((1 << 12) | (1 << 22))) >>> 0 } : e));
    vcpu.setCpuid(entries);
    const back = vcpu.getCpuid().find((e) => e.function === 1)!;
    return back.ecx === entries.find((e) => e.function === 1)!.ecx;
  } finally {
    sys.close(vcpu.fd);
    sys.close(vm.fd);
    kvm.close();
  }
}

/** T2S's IA32_ARCH_CAPABILITIES. */
const T2S_ARCH_CAPABILITIES = 0x0c0a0c4cn;

/**
 * Whether this host's KVM takes T2S's IA32_ARCH_CAPABILITIES on a vCPU: KVM refuses bits it does
 * not support (seen on an AMD host's emulating KVM), and fc-run then refuses the template, naming
 * the MSR, before the guest runs.
 */
let t2sTaken: boolean | undefined;
function kvmTakesT2sArchCapabilities(): boolean {
  return (t2sTaken ??= probeT2sArchCapabilities());
}
function probeT2sArchCapabilities(): boolean {
  const kvm = new Kvm();
  const vm = kvm.createVm();
  const vcpu = vm.createVcpu(0);
  try {
    vcpu.setMsrs([{ index: IA32_ARCH_CAPABILITIES, data: T2S_ARCH_CAPABILITIES }]);
    return true;
  } catch {
    return false;
  } finally {
    sys.close(vcpu.fd);
    sys.close(vm.fd);
    kvm.close();
  }
}
const T2S_REFUSED = /KVM refused a value the CPU template sets: .*MSR 0x10a was refused/;

describeKvm('static CPU templates: what KVM is given', () => {
  // The same VM without a template: KVM's own run-time CPUID updates apply to both alike.
  let plain: ReturnType<typeof configureAndReadBack>;
  beforeAll(() => {
    kvmEchoesCpuid = probeCpuidEcho();
    if (!kvmEchoesCpuid) console.warn("this host's KVM does not report back the CPUID it is given (an instruction-emulating KVM): checking what fc-run passes to KVM_SET_CPUID2");
    plain = configureAndReadBack(planOf(ws.write('plain.json', { 'boot-source': { kernel_image_path: PROBE }, 'machine-config': { vcpu_count: 2, mem_size_mib: 128 } })));
  });

  test.each(X86_STATIC_TEMPLATES)('%s: KVM_GET_CPUID2 on every vCPU has the template\'s bits and the host\'s elsewhere; IA32_ARCH_CAPABILITIES as the template says', (name) => {
    // Configured directly, so this checks the data on any host; the CLI's host check is tested below.
    const plan = planOf(path.join(FIXTURES, `vm_config_cpu_template_${name}.json`));
    if (plan.cpuTemplate.kind !== 'static') throw new Error('expected a static template');
    if (name === 'T2S' && !kvmTakesT2sArchCapabilities()) {
      expect(() => configureAndReadBack(plan)).toThrow(T2S_REFUSED);
      return;
    }
    const got = configureAndReadBack(plan);
    expect(got).toHaveLength(2);
    got.forEach((vcpu, i) => {
      for (const m of plan.cpuTemplate.kind === 'static' ? plan.cpuTemplate.cpuid : []) {
        const mask = Number(BigInt(m.filter.mask));
        const value = Number(BigInt(m.filter.value));
        const reg = entryFor(vcpu.cpuid, m.leaf, m.subleaf)[m.register];
        const where = `vCPU ${i} leaf 0x${m.leaf.toString(16)}.${m.subleaf} ${m.register}`;
        expect([where, (reg & mask) >>> 0]).toEqual([where, value >>> 0]);
        expect([where, (reg & ~mask) >>> 0]).toEqual([where, (entryFor(plain[i].cpuid, m.leaf, m.subleaf)[m.register] & ~mask) >>> 0]);
      }
      const before = plain[i].archCapabilities;
      const expected: Record<X86StaticTemplate, bigint> = {
        C3: before,
        T2: before,
        T2A: before,
        T2S: T2S_ARCH_CAPABILITIES,
        T2CL: before & ~0xffffffffe2f51e00n,
      };
      expect([name, i, got[i].archCapabilities]).toEqual([name, i, expected[name]]);
    });
  });
});

const report = (out: string) => ({
  ok: [...out.matchAll(/^ok - (\S+)/gm)].map((m) => m[1]),
  notOk: [...out.matchAll(/^not ok - .*$/gm)].map((m) => m[0]),
  facts: (key: string) => [...out.matchAll(new RegExp(`^# ${key}: (.*)$`, 'gm'))].map((m) => m[1]),
});

describeKvm('static CPU templates: the probe guest boots with each (Firecracker-style fixtures)', () => {
  const host = hasKvm ? readHostCpu() : undefined;

  test.each(INTEL_TEMPLATES)('%s: the static fixture boots where the host fits and is refused (exit 2) where not; its custom twin boots, or where KVM will not take a value it sets is refused naming the MSR', (name) => {
    const problem = cpuTemplateHostProblem(name, host!);
    const stat = fcRun([path.join(FIXTURES, `vm_config_cpu_template_${name}.json`)]);
    if (problem) {
      expect(stat.code).toBe(2);
      // Refused as a spec error at the template's position, as validate reports it.
      expect(stat.err).toMatch(new RegExp(`:\\d+:\\d+: error\\[${problem.code}\\]: `));
      expect(stat.err).toContain(problem.message);
      expect(stat.out).toBe('');
    } else {
      expect(stat.code).toBe(0);
      expect(report(stat.out).notOk).toEqual([]);
      expect(report(stat.out).facts('cpus-online')).toEqual(['2']);
    }
    const custom = fcRun([path.join(FIXTURES, `vm_config_custom_${name}.json`)]);
    if (name === 'T2S' && !kvmTakesT2sArchCapabilities()) {
      // Refused before the guest runs, naming the MSR KVM would not take.
      expect(custom.err).toMatch(T2S_REFUSED);
      expect(custom.code).not.toBe(0);
      expect(custom.out).toBe('');
      return;
    }
    expect(custom.err).toMatch(/the guest reset the machine/);
    expect(custom.code).toBe(0);
    const r = report(custom.out);
    expect(r.notOk).toEqual([]);
    expect(r.ok).toContain('smp');
    expect(r.facts('cpus-online')).toEqual(['2']);
    // probe.cpuid in the fixture's boot_args: every leaf the templates touch was readable.
    expect(r.facts('cpuid-0x1-0x0')).toHaveLength(1);
    expect(r.facts('cpuid-0x80000008-0x0')).toHaveLength(1);
  });

  test('the guest itself reads T2S\'s IA32_ARCH_CAPABILITIES (when KVM offers the MSR to guests)', () => {
    const kvm = new Kvm();
    const leaf7 = kvm.supportedCpuid().find((e) => e.function === 7 && e.index === 0);
    kvm.close();
    // A guest RDMSR of 0x10a faults unless CPUID.7.0:EDX[29] says the MSR exists; the probe has no IDT.
    if (!leaf7 || !((leaf7.edx >>> 29) & 1)) return;
    const spec = ws.write('t2s-msr.json', {
      'boot-source': { kernel_image_path: PROBE, boot_args: `console=ttyS0 reboot=k panic=1 probe.rdmsr=0x${IA32_ARCH_CAPABILITIES.toString(16)}` },
      'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
      'cpu-config': path.join(FIXTURES, 'cpu-templates', 'T2S.json'),
    });
    const r = fcRun([spec]);
    if (!kvmTakesT2sArchCapabilities()) {
      expect(r.err).toMatch(T2S_REFUSED);
      expect(r.code).not.toBe(0);
      return;
    }
    expect(r.code).toBe(0);
    expect(report(r.out).facts('msr-0x10a').map((v) => BigInt(v))).toEqual([T2S_ARCH_CAPABILITIES]);
  });
});
