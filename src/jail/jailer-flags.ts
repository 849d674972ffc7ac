import * as path from 'node:path';

/**
 * Firecracker's jailer flags that need more than the command-line parser's checks, as pure
 * functions: `--resource-limit`, the jail's layout, and the arguments the jailer gives the jailed
 * process.
 */

export type ResourceName = 'fsize' | 'no-file';

export interface ResourceLimit {
  resource: ResourceName;
  /** Both the soft and the hard limit, as Firecracker's jailer sets them. */
  value: bigint;
}

/** Without a `--resource-limit no-file=…`, the jailer bounds open files to this (Firecracker's default). */
export const DEFAULT_NO_FILE = 2048n;
const U64_MAX = (1n << 64n) - 1n;

/** `<resource>=<value>` (fsize or no-file, a whole number); the problem as text, or the limit. */
export function parseResourceLimit(text: string): ResourceLimit | string {
  const eq = text.indexOf('=');
  if (eq < 0) return 'expected <resource>=<value>, e.g. no-file=1024 or fsize=250000000';
  const name = text.slice(0, eq);
  const value = text.slice(eq + 1);
  if (name !== 'fsize' && name !== 'no-file') return `"${name}" is not a resource the jailer limits (fsize: largest file size in bytes; no-file: open files)`;
  if (!/^(0|[1-9][0-9]*)$/.test(value) || BigInt(value) > U64_MAX) return `${name} must be a whole number of at most 20 digits, got "${value}"`;
  return { resource: name, value: BigInt(value) };
}

/** The limits the jailed process gets: those given (the last one of each resource wins), and no-file's default. */
export function effectiveLimits(given: readonly ResourceLimit[]): ResourceLimit[] {
  const byName = new Map<ResourceName, bigint>([['no-file', DEFAULT_NO_FILE]]);
  for (const l of given) byName.set(l.resource, l.value);
  return [...byName].map(([resource, value]) => ({ resource, value }));
}

/** util-linux prlimit's flags for the limits. */
export function prlimitFlags(limits: readonly ResourceLimit[]): string[] {
  return limits.map((l) => `--${l.resource === 'fsize' ? 'fsize' : 'nofile'}=${l.value}:${l.value}`);
}

export interface JailLayout {
  /** `<base>/<exec file name>/<id>`: root's, holding the jail root. */
  jailDir: string;
  /** `<jailDir>/root`: `/` for the jailed process. */
  root: string;
  /** `<root>/<exec file name>.pid`: the jailed process's PID, as Firecracker's jailer writes it. */
  pidFile: string;
}

/** Firecracker's jailer layout: `<chroot base>/<exec file name>/<id>/root`. */
export function jailLayout(baseDir: string, execName: string, id: string): JailLayout {
  const jailDir = path.join(path.resolve(baseDir), execName, id);
  const root = path.join(jailDir, 'root');
  return { jailDir, root, pidFile: path.join(root, `${execName}.pid`) };
}

/** The flags the jailer itself passes to the jailed fc-run, before the user's; given again after `--` they are refused. */
export const JAILER_SUPPLIED_FLAGS = ['id', 'start-time-us', 'start-time-cpu-us', 'parent-cpu-time-us', 'exit-with-fd'] as const;

/** The jailed `fc-run run` command line (after the program), Firecracker's way: the jailer's flags first, then the user's. */
export function jailedRunArgs(id: string, startTimeUs: bigint, lifelineFd: number, userArgs: readonly string[]): string[] {
  return ['run', '--id', id, '--start-time-us', String(startTimeUs), '--exit-with-fd', String(lifelineFd), ...userArgs];
}
