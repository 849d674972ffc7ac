import * as fs from 'node:fs';
import type { SpecIssue } from '../config/issues';
import { FileError, openRegularFile } from '../config/regular-file';
import { failSpec } from '../config/validate';
import type { LoadedSpec } from '../config/validate';
import { inspectKernelFile, KernelImageError } from './kernel-image';
import { checkSpecOnly, compilePlan, CompiledPlan, PlanError } from './plan';
import { cpuTemplateHostProblem, HostCpu, readHostCpu } from './host-cpu';
import { isX86StaticTemplate } from './static-cpu-templates';

/** Starts vCPU threads ahead of need; worker_threads is loaded only by the commands that launch. */
export function prewarmVcpuThreads(count: number, customFilters = false): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  (require('../vmm/threads') as typeof import('../vmm/threads')).prewarmVcpuThreads(count, customFilters);
}

export { compilePlan, canonicalJson, PlanError, PLAN_VERSION } from './plan';
export type { BootPlan, CompiledPlan, DevicePlan, PlanIssue } from './plan';
export { inspectKernel, inspectKernelFile, KernelImageError } from './kernel-image';
export type { KernelImage } from './kernel-image';
export { assertCpuTemplateFitsHost, cpuTemplateHostProblem, parseCpuinfo, readHostCpu } from './host-cpu';
export type { HostCpu } from './host-cpu';
export { staticCpuTemplate, X86_STATIC_TEMPLATES } from './static-cpu-templates';

export interface PlannedSpec extends CompiledPlan {
  /** Validation and planning warnings together, located in the spec. */
  allWarnings: SpecIssue[];
}

/**
 * Reads the kernel's headers and the initrd's size, then compiles the plan. Every refusal is
 * reported like a validation error, located in the spec, so the user fixes both the same way.
 */
export function planSpec(loaded: LoadedSpec): PlannedSpec {
  const { spec } = loaded;
  const fail = (issues: Omit<SpecIssue, 'file' | 'line' | 'column'>[]): never => failSpec(loaded, issues);
  const kernelAt = ['boot-source', 'kernel_image_path'];
  let kernel;
  try {
    kernel = inspectKernelFile(spec.bootSource.kernel_image_path);
  } catch (err) {
    if (err instanceof FileError) return fail([{ severity: 'error', code: err.code, path: kernelAt, message: err.message, hint: 'point kernel_image_path at a vmlinux (ELF) or bzImage file' }]);
    if (!(err instanceof KernelImageError)) throw err;
    return fail([{ severity: 'error', code: 'kernel-image', path: kernelAt, message: err.message, hint: 'point kernel_image_path at a vmlinux (ELF) or bzImage built for x86_64' }]);
  }
  let initrd: { size: number } | undefined;
  if (spec.bootSource.initrd_path !== undefined) {
    try {
      // Opened, not just stat()ed: the same checks launch makes, so what plans also loads.
      const { fd, size } = openRegularFile(spec.bootSource.initrd_path, 'initrd');
      fs.closeSync(fd);
      initrd = { size };
    } catch (err) {
      if (!(err instanceof FileError)) throw err;
      return fail([{ severity: 'error', code: err.code, path: ['boot-source', 'initrd_path'], message: err.message, hint: 'point initrd_path at a cpio archive (a regular file)' }]);
    }
  }
  try {
    const compiled = compilePlan(spec, kernel, initrd);
    // Added to the compiled plan itself (not spread into a copy, which would take its hash now).
    return Object.assign(compiled, { allWarnings: [...loaded.warnings, ...compiled.warnings.map(loaded.locate)] });
  } catch (err) {
    if (err instanceof PlanError) return fail(err.issues);
    throw err;
  }
}

/**
 * What keeps a valid spec from running on this host, located in the spec: today a static CPU
 * template made for another CPU vendor or model. For `fc-run validate` (checking a spec for this
 * host) and `fc-run run` before launch; launch checks again in any case.
 */
export function hostIssues(loaded: LoadedSpec, host?: HostCpu): SpecIssue[] {
  const { spec } = loaded;
  const name = spec.machine.cpu_template;
  // A custom template replaces the static one (and has no host restriction).
  if (spec.cpuConfig || !isX86StaticTemplate(name)) return [];
  const problem = cpuTemplateHostProblem(name, host ?? readHostCpu());
  if (!problem) return [];
  return [loaded.locate({ severity: 'error', code: problem.code, path: ['machine-config', 'cpu_template'], message: problem.message, hint: problem.hint })];
}

/** Throws SpecInvalidError (exit 2) when hostIssues finds anything. */
export function assertSpecFitsHost(loaded: LoadedSpec, host?: HostCpu): void {
  const issues = hostIssues(loaded, host);
  if (issues.length > 0) failSpec(loaded, issues);
}

/**
 * Everything `run` checks before it touches KVM: the whole plan (kernel headers, layout), the
 * host's CPU for a static template, and the sockets the VM would create (skip those where they
 * are made elsewhere, as in a jail). Throws SpecInvalidError.
 */
export function planRunnable(loaded: LoadedSpec, opts: { host?: HostCpu; sockets?: boolean } = {}): PlannedSpec {
  const planned = planSpec(loaded);
  assertSpecFitsHost(loaded, opts.host);
  if (opts.sockets !== false) checkSockets(loaded);
  return planned;
}

/**
 * What `validate` checks: with the files, all `run` checks (planRunnable); without them
 * (--skip-files), every check that needs only the spec. Returns the warnings; throws
 * SpecInvalidError.
 */
export function checkRunnable(loaded: LoadedSpec, readFiles: boolean): SpecIssue[] {
  if (readFiles) return planRunnable(loaded).allWarnings;
  const issues = checkSpecOnly(loaded.spec);
  if (issues.some((i) => i.severity === 'error')) failSpec(loaded, issues);
  return [...loaded.warnings, ...issues.map(loaded.locate)];
}

/** A socket the VM would create must not be another live process's (a second VM's vsock). */
export function checkSockets(loaded: LoadedSpec): void {
  const vsock = loaded.spec.vsock;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  if (vsock && (require('../kvm/unix-socket') as typeof import('../kvm/unix-socket')).socketPathState(vsock.uds_path) === 'live') {
    failSpec(loaded, [
      {
        severity: 'error',
        code: 'socket-in-use',
        path: ['vsock', 'uds_path'],
        message: `${vsock.uds_path} is a live socket: another process (another VM?) is listening on it`,
        hint: 'give each VM its own uds_path',
      },
    ]);
  }
}
