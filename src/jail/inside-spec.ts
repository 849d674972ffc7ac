import * as fs from 'node:fs';
import * as path from 'node:path';
import { FcRunError } from '../errors';
import type { SpecIssue } from '../config/issues';
import { failSpec, loadSpecFile, LoadedSpec } from '../config/validate';
import { resolveInRoot } from './inside';

/**
 * In Firecracker's jailer form the jailed fc-run reads the spec and its files inside the jail; the
 * jailer checks them first, from outside, so that a wrong path is reported before anything is
 * built (and not lost when the run is daemonized, its output going to /dev/null).
 */

export interface InsideSpecArgs {
  /** The spec as given after `--` (--config-file or the <spec> argument): inside the jail, relative to its `/`. */
  configFile: string;
  /** --metadata after `--`, inside the jail. */
  metadataFile?: string;
  mmdsSizeLimit?: number;
}

const HINT = (root: string) => `paths after -- and in the spec are seen from inside the jail, whose / is ${root}: copy or hard-link the file there`;

/** Validates the spec in the jail at `root` and checks that the files it reads are in the jail. */
export function checkInsideSpec(root: string, a: InsideSpecArgs): LoadedSpec {
  const insideSpec = path.posix.resolve('/', a.configFile);
  const hostSpec = resolveInRoot(root, insideSpec);
  if (!fs.existsSync(hostSpec)) {
    throw new FcRunError('jail-file', `the spec ${a.configFile} is not in the jail: ${hostSpec} does not exist (${HINT(root)})`);
  }
  const metadataFile = a.metadataFile !== undefined ? resolveInRoot(root, a.metadataFile) : undefined;
  // Files are checked below, inside the jail: as the host sees the spec's paths they mean nothing.
  const loaded = loadSpecFile(hostSpec, { skipFiles: true, metadataFile, mmdsSizeLimit: a.mmdsSizeLimit });
  const raw = loaded.spec.raw as unknown as Record<string, any>;
  const issues: SpecIssue[] = [];
  // The jailed fc-run resolves relative paths in the spec against the spec's directory.
  const specDir = path.posix.dirname(insideSpec);
  const check = (p: unknown, at: (string | number)[], what: string, blockDeviceOk = false) => {
    if (typeof p !== 'string' || p === '') return;
    const inside = path.posix.resolve(specDir, p);
    const host = resolveInRoot(root, inside);
    let st: fs.Stats;
    try {
      st = fs.statSync(host);
    } catch {
      issues.push(loaded.locate({ severity: 'error', code: 'file-missing', path: at, message: `${what} ${inside} is not in the jail: ${host} does not exist`, hint: HINT(root) }));
      return;
    }
    if (!st.isFile() && !(blockDeviceOk && st.isBlockDevice())) {
      issues.push(loaded.locate({ severity: 'error', code: 'file-not-regular', path: at, message: `${what} ${inside} is not a regular file (in the jail: ${host})`, hint: HINT(root) }));
    }
  };
  check(raw['boot-source']?.kernel_image_path, ['boot-source', 'kernel_image_path'], 'the kernel image');
  check(raw['boot-source']?.initrd_path, ['boot-source', 'initrd_path'], 'the initrd');
  (Array.isArray(raw.drives) ? raw.drives : []).forEach((d: Record<string, unknown>, i: number) => check(d?.path_on_host, ['drives', i, 'path_on_host'], `drive "${String(d?.drive_id)}" file`, true));
  check(raw['cpu-config'], ['cpu-config'], 'the CPU template file');
  if (issues.length > 0) failSpec(loaded, issues);
  return loaded;
}
