import * as fs from 'node:fs';
import * as path from 'node:path';
import { IssueList } from './issues';
import type { ResolvedSpec } from './resolved';

/**
 * Outputs fc-run writes (log, metrics, serial console, sockets it creates) must never be one of
 * its inputs (kernel, initrd, drives, templates, the spec itself) nor each other: a metrics path
 * equal to a drive image would append JSON into the disk. Identity is the device and inode when
 * the file exists (so links and other spellings of a path are caught), the absolute path with its
 * directory's symlinks resolved otherwise.
 */

/** Outputs set on the command line; each replaces the spec's setting of the same output. */
export interface FlagOutputs {
  logPath?: string;
  metricsPath?: string;
  serialOut?: string;
  apiSock?: string;
}

interface Endpoint {
  abs: string;
  /** How the user named it: a spec path or a flag. */
  what: string;
  /** Where to point in the spec (empty for flags and the spec itself). */
  at: (string | number)[];
  output: boolean;
}

/** Identity of a path: dev/inode of an existing file, else where it would be created (see above). */
export function fileIdentity(abs: string, readFiles: boolean): { key: string; charDevice: boolean } {
  if (readFiles) {
    try {
      const st = fs.statSync(abs);
      return { key: `inode:${st.dev}:${st.ino}`, charDevice: st.isCharacterDevice() };
    } catch {
      /* does not exist yet: compare paths */
    }
    try {
      const target = danglingTarget(abs);
      return { key: `path:${path.join(fs.realpathSync(path.dirname(target)), path.basename(target))}`, charDevice: false };
    } catch {
      /* no such directory: the plain path */
    }
  }
  const resolved = path.resolve(abs);
  // Without reading files (--skip-files) /dev/null is still known to be the null device: it may
  // take any number of outputs, as when the files are read.
  return { key: `path:${resolved}`, charDevice: resolved === '/dev/null' };
}

/**
 * Where a path that does not exist (yet) will be created: a dangling symbolic link is followed to
 * the file opening it with O_CREAT makes, so two outputs named through links are still compared
 * by where they land.
 */
function danglingTarget(abs: string): string {
  let at = abs;
  for (let hops = 0; hops < 40; hops++) {
    let link: string;
    try {
      if (!fs.lstatSync(at).isSymbolicLink()) return at;
      link = fs.readlinkSync(at);
    } catch {
      return at;
    }
    at = path.resolve(path.dirname(at), link);
  }
  return at;
}

export function checkCollisions(
  spec: ResolvedSpec,
  issues: IssueList,
  opts: { specFile: string; metadataFile?: string; flags?: FlagOutputs; readFiles: boolean },
): void {
  const flags = opts.flags ?? {};
  const list: Endpoint[] = [];
  const input = (abs: string | undefined, what: string, at: (string | number)[] = []) => abs && list.push({ abs, what, at, output: false });
  const output = (abs: string | undefined, what: string, at: (string | number)[] = []) => abs && list.push({ abs, what, at, output: true });

  input(opts.specFile, 'the spec file');
  input(opts.metadataFile && path.resolve(opts.metadataFile), '--metadata');
  input(spec.bootSource.kernel_image_path, 'kernel_image_path', ['boot-source', 'kernel_image_path']);
  input(spec.bootSource.initrd_path, 'initrd_path', ['boot-source', 'initrd_path']);
  // A writable drive is written by the guest: it must not be the kernel, the spec or a template.
  spec.drives.forEach((d, i) => (d.is_read_only ? input : output)(d.path_on_host, `drive "${d.drive_id}"`, ['drives', i, 'path_on_host']));
  if (spec.cpuConfig && spec.cpuConfig.source !== 'inline') input(spec.cpuConfig.source, 'the cpu-config template', ['cpu-config']);

  if (flags.logPath !== undefined) output(path.resolve(flags.logPath), '--log-path');
  else output(spec.logger?.log_path, 'logger.log_path', ['logger', 'log_path']);
  if (flags.metricsPath !== undefined) output(path.resolve(flags.metricsPath), '--metrics-path');
  else output(spec.metrics?.metrics_path, 'metrics.metrics_path', ['metrics', 'metrics_path']);
  if (flags.serialOut !== undefined && flags.serialOut !== 'none' && flags.serialOut !== '-') output(path.resolve(flags.serialOut), '--serial-out');
  if (flags.apiSock !== undefined) output(path.resolve(flags.apiSock), '--api-sock');
  output(spec.vsock?.uds_path, 'vsock.uds_path', ['vsock', 'uds_path']);

  const seen = new Map<string, Endpoint>();
  for (const e of list) {
    const id = fileIdentity(e.abs, opts.readFiles);
    const first = seen.get(id.key);
    if (!first) {
      seen.set(id.key, e);
      continue;
    }
    if (!e.output && !first.output) continue; // two inputs may share a file
    // Two drives on one file: the rules warn (read-only sharing is fine, two writers the user's call).
    if (e.at[0] === 'drives' && first.at[0] === 'drives') continue;
    // /dev/null and terminals may take any number of outputs.
    if (e.output && first.output && id.charDevice) continue;
    const [out, other] = e.output ? [e, first] : [first, e];
    const at = out.at.length > 0 ? out.at : other.at;
    issues.error(
      'output-overwrites',
      at,
      other.output
        ? `${out.what} and ${other.what} are the same file (${out.abs}); each output needs a file of its own`
        : `${out.what} (${out.abs}) is also ${other.what}: fc-run would write into it`,
      `choose another path for ${out.what}`,
    );
  }
}
