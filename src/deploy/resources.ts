import * as path from 'node:path';
import type { ResolvedSpec } from '../config/resolved';
import { FcRunError, EXIT_INVALID_SPEC } from '../errors';

/**
 * Memory fc-run itself needs beside the guest's, in MiB. Measured here: Node with koffi (then its FFI) and four
 * idle worker threads has about 80 MiB resident; each vCPU is one worker thread (its own V8
 * isolate, 10–15 MiB), and the VMM thread, API server and device buffers come on top. Guest
 * memory is mapped MAP_NORESERVE, so only pages the guest touches count, up to mem_size_mib.
 */
export function vmmOverheadMib(vcpus: number): number {
  return 128 + 16 * vcpus;
}

/** The instance name a spec file gets by default: its base name, in fc-run's --id alphabet. */
export function defaultInstanceName(specFile: string): string {
  const base = path.basename(specFile).replace(/\.jsonc?$/i, '');
  const name = base.replace(/[^A-Za-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 64);
  return name.length > 0 ? name : 'vm';
}

/** Control characters cannot be written into a unit file or a manifest line faithfully. */
export function assertPrintablePath(p: string, what: string): void {
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(p)) {
    throw new FcRunError('unprintable-path', `${what} ${JSON.stringify(p)} contains a control character (a newline?); rename it`, EXIT_INVALID_SPEC);
  }
}

/** A file or directory the VM reads or writes on the host, and how. */
export interface HostPath {
  path: string;
  writable: boolean;
  /** A file that must exist, or a directory fc-run creates files in. */
  kind: 'file' | 'directory';
  what: string;
}

/**
 * Everything on the host a spec touches, with absolute paths: what a sandbox around fc-run has to
 * leave visible (and writable where fc-run writes).
 */
export function hostPathsOf(spec: ResolvedSpec): HostPath[] {
  const out: HostPath[] = [];
  const add = (p: HostPath) => {
    assertPrintablePath(p.path, p.what);
    // A file directly in / makes / the directory to leave writable: the whole file system (a
    // unit's ReadWritePaths=/, a pod's read-write hostPath of the node's root at /).
    if (p.kind === 'directory' && p.path === '/') {
      throw new FcRunError('deploy-root-directory', `the ${p.what} is / (the file is directly in /): a sandbox would have to leave the whole file system writable; put the file in a directory of its own`, EXIT_INVALID_SPEC);
    }
    const same = out.find((o) => o.path === p.path && o.kind === p.kind);
    if (same) same.writable ||= p.writable;
    else out.push(p);
  };
  add({ path: spec.bootSource.kernel_image_path, writable: false, kind: 'file', what: 'kernel' });
  if (spec.bootSource.initrd_path) add({ path: spec.bootSource.initrd_path, writable: false, kind: 'file', what: 'initrd' });
  if (spec.cpuConfig && path.isAbsolute(spec.cpuConfig.source)) add({ path: spec.cpuConfig.source, writable: false, kind: 'file', what: 'cpu-config template' });
  for (const d of spec.drives) {
    if (d.path_on_host) add({ path: d.path_on_host, writable: !d.is_read_only, kind: 'file', what: `drive ${d.drive_id}` });
  }
  // fc-run creates these files (or opens an existing FIFO): their directories must be writable.
  if (spec.logger?.log_path) add({ path: path.dirname(spec.logger.log_path), writable: true, kind: 'directory', what: 'log directory' });
  if (spec.metrics) add({ path: path.dirname(spec.metrics.metrics_path), writable: true, kind: 'directory', what: 'metrics directory' });
  if (spec.vsock) add({ path: path.dirname(spec.vsock.uds_path), writable: true, kind: 'directory', what: 'vsock socket directory' });
  return out;
}
