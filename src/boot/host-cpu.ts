import * as fs from 'node:fs';
import { EXIT_INVALID_SPEC, FcRunError } from '../errors';
import type { CpuidEntry } from '../kvm/kvm';
import type { CpuTemplatePlan } from './plan';
import { CpuModel, templateModels, templateVendor, X86_STATIC_TEMPLATES, X86StaticTemplate } from './static-cpu-templates';

/** The host processor, as the kernel reports CPUID leaves 0 and 1 in /proc/cpuinfo. */
export interface HostCpu {
  vendor: string;
  family: number;
  model: number;
  stepping: number;
  /** The brand string, only for messages. */
  modelName?: string;
}

/** Reads the first processor of /proc/cpuinfo (x86 hosts have one vendor and model). */
export function parseCpuinfo(text: string): HostCpu | undefined {
  const first = text.split(/\n\s*\n/)[0] ?? '';
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1].trim();
  const vendor = field('vendor_id');
  const num = (name: string) => {
    const v = field(name);
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
  };
  const family = num('cpu family');
  const model = num('model');
  const stepping = num('stepping');
  if (!vendor || family === undefined || model === undefined || stepping === undefined) return undefined;
  return { vendor, family, model, stepping, modelName: field('model name') };
}

/** /proc/cpuinfo read once per process: the CPU does not change while fc-run runs. */
let hostCpu: HostCpu | undefined;

/** This host's CPU, read from /proc/cpuinfo (once) or from `file`. */
export function readHostCpu(file?: string): HostCpu {
  if (file === undefined) return (hostCpu ??= readCpuinfo('/proc/cpuinfo'));
  return readCpuinfo(file);
}

function readCpuinfo(file: string): HostCpu {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new FcRunError('host-cpu', `cannot read ${file} to learn this host's CPU vendor and model (${(err as NodeJS.ErrnoException).code})`);
  }
  const cpu = parseCpuinfo(text);
  if (!cpu) throw new FcRunError('host-cpu', `${file} does not name a vendor_id, cpu family, model and stepping: is this an x86_64 host?`);
  return cpu;
}

/** The vendor string of CPUID leaf 0 (EBX, EDX, ECX), e.g. from KVM_GET_SUPPORTED_CPUID. */
export function vendorFromCpuid(entries: CpuidEntry[]): string | undefined {
  const leaf0 = entries.find((e) => e.function === 0);
  if (!leaf0) return undefined;
  const b = Buffer.alloc(12);
  b.writeUInt32LE(leaf0.ebx >>> 0, 0);
  b.writeUInt32LE(leaf0.edx >>> 0, 4);
  b.writeUInt32LE(leaf0.ecx >>> 0, 8);
  return b.toString('latin1');
}

const VENDOR_WORD: Record<string, string> = { GenuineIntel: 'an Intel', AuthenticAMD: 'an AMD' };

const describeModel = (m: { family: number; model: number; stepping: number }) =>
  `family ${m.family} model 0x${m.model.toString(16)} stepping ${m.stepping}`;

function runsOn(name: X86StaticTemplate, host: HostCpu): boolean {
  return templateVendor(name) === host.vendor && templateModels(name).some((m) => sameModel(m, host));
}

function sameModel(m: CpuModel, host: HostCpu): boolean {
  return m.family === host.family && m.model === host.model && m.stepping === host.stepping;
}

export interface CpuTemplateHostProblem {
  code: 'cpu-template-vendor' | 'cpu-template-model';
  message: string;
  hint: string;
}

/**
 * Why a static CPU template cannot run on this host, or undefined when it can. Firecracker
 * refuses a template on another vendor's CPU and on processors other than the ones it was made
 * for (exact family, model and stepping), so fc-run does too: T2S and T2CL tell the guest about
 * hardware mitigations through IA32_ARCH_CAPABILITIES, which would be false on other processors.
 */
export function cpuTemplateHostProblem(name: X86StaticTemplate, host: HostCpu): CpuTemplateHostProblem | undefined {
  // Only values this host would accept are ever suggested.
  const fits = X86_STATIC_TEMPLATES.filter((t) => t !== name && runsOn(t, host)).map((t) => `"${t}"`);
  const hint = `use ${fits.length > 0 ? `${fits.join(', ')}, ` : ''}"None", or a custom template in "cpu-config", which has no host restriction`;
  const vendor = templateVendor(name);
  if (vendor !== host.vendor) {
    return { code: 'cpu-template-vendor', message: `cpu_template ${name} needs ${VENDOR_WORD[vendor]} host; this host is ${host.vendor}`, hint };
  }
  const models = templateModels(name);
  if (!models.some((m) => sameModel(m, host))) {
    const wanted = models.map((m) => `${m.name} (${describeModel(m)})`).join(', ');
    const brand = host.modelName ? `, ${host.modelName}` : '';
    return { code: 'cpu-template-model', message: `cpu_template ${name} runs only on ${wanted}; this host is ${describeModel(host)}${brand}`, hint };
  }
  return undefined;
}

/**
 * Refuses a plan whose static CPU template does not fit this host, before anything starts. Exit
 * 2: the spec asks for something this host cannot give, and the fix is in the spec.
 */
export function assertCpuTemplateFitsHost(template: CpuTemplatePlan, host?: HostCpu): void {
  if (template.kind !== 'static') return;
  // Only a static template reads the host's CPU (an aarch64 machine validating specs has none).
  const problem = cpuTemplateHostProblem(template.name, host ?? readHostCpu());
  if (problem) throw new FcRunError(problem.code, `${problem.message}; ${problem.hint}`, EXIT_INVALID_SPEC);
}
