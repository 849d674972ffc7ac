import * as fs from 'node:fs';
import { SpecInvalidError, SpecIssue } from '../config/issues';
import { FileError, openRegularFile } from '../config/regular-file';
import type { LoadedSpec } from '../config/validate';
import { inspectKernelFile, KernelImageError } from './kernel-image';
import { compilePlan, CompiledPlan, PlanError } from './plan';

export { compilePlan, canonicalJson, PlanError, PLAN_VERSION } from './plan';
export type { BootPlan, CompiledPlan, DevicePlan, PlanIssue } from './plan';
export { inspectKernel, inspectKernelFile, KernelImageError } from './kernel-image';
export type { KernelImage } from './kernel-image';

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
  const fail = (issues: Omit<SpecIssue, 'file' | 'line' | 'column'>[]): never => {
    throw new SpecInvalidError(spec.specFile, [...loaded.warnings, ...issues.map(loaded.locate)]);
  };
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
    return { ...compiled, allWarnings: [...loaded.warnings, ...compiled.warnings.map(loaded.locate)] };
  } catch (err) {
    if (err instanceof PlanError) return fail(err.issues);
    throw err;
  }
}
