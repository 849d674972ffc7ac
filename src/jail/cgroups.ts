import * as fs from 'node:fs';
import * as path from 'node:path';
import { FcRunError } from '../errors';

/**
 * The jail's cgroups: `<hierarchy>/<parent>/<id>`, where the hierarchy is a v1 controller's mount
 * or the v2 mount, found in /proc/mounts as Firecracker's jailer finds them. The settings are
 * written before the microVM's process joins, so it never runs unbounded.
 */

export interface CgroupMounts {
  /** v1 controller name → where its hierarchy is mounted. */
  v1: Map<string, string>;
  /** The cgroup v2 (unified) mount, if any. */
  v2?: string;
}

/** /proc/mounts escapes space, tab, newline and backslash as octal. */
function unescapeMount(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount options of a cgroup v1 mount that are not controllers. */
const NOT_CONTROLLERS = new Set(['rw', 'ro', 'relatime', 'noatime', 'strictatime', 'nodiratime', 'lazytime', 'nosuid', 'nodev', 'noexec', 'sync', 'dirsync', 'xattr', 'noprefix', 'clone_children', 'cpuset_v2_mode', 'favordynmods']);

/** The cgroup hierarchies in /proc/mounts text. */
export function parseCgroupMounts(procMounts: string): CgroupMounts {
  const mounts: CgroupMounts = { v1: new Map() };
  for (const line of procMounts.split('\n')) {
    const [, dir, type, options] = line.split(' ');
    if (type === 'cgroup') {
      // The options hold the hierarchy's controllers among mount flags (rw, relatime, ...) and
      // cgroup v1 options (name=, xattr, ...): only a controller may take a --cgroup setting.
      for (const opt of options.split(',')) if (!NOT_CONTROLLERS.has(opt) && !opt.includes('=') && !mounts.v1.has(opt)) mounts.v1.set(opt, unescapeMount(dir));
    } else if (type === 'cgroup2' && mounts.v2 === undefined) {
      mounts.v2 = unescapeMount(dir);
    }
  }
  return mounts;
}

export interface CgroupSetting {
  /** As given, for messages. */
  text: string;
  controller: string;
  /** The cgroup file, e.g. memory.limit_in_bytes. */
  file: string;
  value: string;
}

const EXAMPLE = 'e.g. memory.limit_in_bytes=268435456 or pids.max=64';

/** `<controller>.<file>=<value>`; the problem with it as text (for a usage error), or the setting. */
export function parseCgroupSetting(text: string): CgroupSetting | string {
  const eq = text.indexOf('=');
  if (eq < 0) return `expected <controller>.<file>=<value>, ${EXAMPLE}`;
  const file = text.slice(0, eq);
  const value = text.slice(eq + 1);
  // One file name, nothing that walks the hierarchy ("/", ".."): a setting names a file of the jail's own cgroup.
  if (!/^[a-z][a-z0-9_]*\.[a-z0-9_.]*[a-z0-9_]$/.test(file) || file.includes('..')) return `"${file}" is not a cgroup file name (<controller>.<file>, ${EXAMPLE})`;
  if (value === '') return `gives no value for ${file}`;
  return { text, controller: file.slice(0, file.indexOf('.')), file, value };
}

/** `--parent-cgroup`: a relative path in the hierarchy, without "." or "..", as Firecracker's jailer requires. */
export function parentCgroupProblem(parent: string): string | undefined {
  if (parent.startsWith('/')) return 'must be a path relative to the cgroup hierarchy (no leading "/")';
  if (parent.split('/').some((c) => c === '.' || c === '..')) return 'may not contain "." or ".."';
  if (parent.split('/').some((c) => c === '')) return 'may not contain empty components ("//" or a trailing "/")';
  return undefined;
}

export interface CgroupDir {
  /** Where the hierarchy is mounted. */
  mount: string;
  /** `<mount>/<parent>/<id>`. */
  dir: string;
  v2: boolean;
  controllers: string[];
  settings: CgroupSetting[];
}

export interface CgroupPlan {
  /** The jail's own cgroups: created, written, joined, removed at the end. */
  create: CgroupDir[];
  /** Existing cgroups the process joins without creating or removing them. */
  join: string[];
}

export interface CgroupPlanOptions {
  id: string;
  /** Relative path of the parent cgroup in each hierarchy. */
  parent: string;
  /** 1 or 2 as `--cgroup-version` says; 'auto' takes v1 where the controller has a v1 hierarchy, else v2. */
  version: 1 | 2 | 'auto';
  mounts: CgroupMounts;
  /** The controllers the v2 hierarchy offers (its root's cgroup.controllers). */
  v2Controllers: ReadonlySet<string>;
}

function fail(message: string): never {
  throw new FcRunError('jail-cgroup', message);
}

/** Where each setting goes (pure: the mounts and controllers are given). */
export function planCgroups(settings: readonly CgroupSetting[], opts: CgroupPlanOptions): CgroupPlan {
  const byDir = new Map<string, CgroupDir>();
  for (const s of settings) {
    const v1Mount = opts.mounts.v1.get(s.controller);
    const v2Ok = opts.mounts.v2 !== undefined && opts.v2Controllers.has(s.controller);
    let mount: string;
    let v2: boolean;
    if (opts.version === 1 || (opts.version === 'auto' && v1Mount)) {
      if (!v1Mount) {
        const hint = opts.mounts.v2 !== undefined ? ' (this host has cgroup v2: add --cgroup-version 2)' : '';
        fail(`--cgroup ${s.text}: no cgroup v1 hierarchy for the "${s.controller}" controller on this host${hint}`);
      }
      mount = v1Mount;
      v2 = false;
    } else {
      if (opts.mounts.v2 === undefined) fail(`--cgroup ${s.text}: no cgroup ${opts.version === 2 ? 'v2 hierarchy' : `controller "${s.controller}"`} on this host`);
      if (!v2Ok) fail(`--cgroup ${s.text}: the cgroup v2 hierarchy at ${opts.mounts.v2} has no "${s.controller}" controller (see ${path.join(opts.mounts.v2, 'cgroup.controllers')})`);
      mount = opts.mounts.v2;
      v2 = true;
    }
    const dir = path.join(mount, opts.parent, opts.id);
    const entry = byDir.get(dir) ?? { mount, dir, v2, controllers: [], settings: [] };
    if (!entry.controllers.includes(s.controller)) entry.controllers.push(s.controller);
    entry.settings.push(s);
    byDir.set(dir, entry);
  }
  return { create: [...byDir.values()], join: [] };
}

/** The processes in a cgroup (empty when there are none or it is gone). */
export function cgroupProcesses(dir: string): number[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/**
 * Creates the plan's cgroups and writes their settings; `created` receives each directory made
 * for this jail as soon as it exists, so a failure part-way can remove them.
 */
export function createCgroups(plan: CgroupPlan, created: string[]): void {
  for (const cg of plan.create) {
    const rel = path.relative(cg.mount, cg.dir).split(path.sep);
    for (let i = 1; i <= rel.length; i++) {
      const d = path.join(cg.mount, ...rel.slice(0, i));
      const own = i === rel.length;
      if (cg.v2) {
        // A v2 controller must be enabled in every ancestor for the child to have its files.
        for (const c of cg.controllers) {
          try {
            fs.writeFileSync(path.join(path.dirname(d), 'cgroup.subtree_control'), `+${c}`);
          } catch {
            // already enabled, or not delegable: the write of the setting below says so
          }
        }
      }
      if (!own && fs.existsSync(d)) continue;
      fs.mkdirSync(d); // the jail's own one must not exist yet: leftovers are refused before this
      if (own) created.push(d);
      if (!cg.v2 && cg.controllers.includes('cpuset')) {
        // A v1 cpuset starts empty; it needs CPUs and memory nodes before a process can join.
        for (const f of ['cpuset.cpus', 'cpuset.mems']) fs.writeFileSync(path.join(d, f), fs.readFileSync(path.join(path.dirname(d), f), 'utf8'));
      }
    }
    for (const s of cg.settings) {
      try {
        fs.writeFileSync(path.join(cg.dir, s.file), s.value);
      } catch (err) {
        fail(`--cgroup ${s.text}: cannot write ${path.join(cg.dir, s.file)} (${(err as NodeJS.ErrnoException).code})`);
      }
    }
  }
}
