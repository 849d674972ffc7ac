import { fileIdentity } from './collisions';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MAX_CONFIG_FILE_BYTES, readText } from './read';

/**
 * Finds the spec files behind `fc-run validate`'s arguments, which may mix files and directories.
 *
 * A file named on the command line is a spec, whatever its name. A directory is walked
 * recursively (symbolic links followed, each directory entered once, so a link loop ends the walk
 * instead of hanging it); hidden directories (.git, ...), hidden files and node_modules are skipped.
 * Every `*.json` file found is a spec, except:
 *   - a file some spec names in "cpu-config" (a CPU template, checked as part of that spec),
 *   - the --metadata file (MMDS contents, checked as part of every spec),
 *   - a file whose top level is an object made only of CPU-template keys (cpuid_modifiers,
 *     msr_modifiers, ...): a library of templates no spec in the walk happens to name.
 * Everything else that ends in .json is reported, so a spec broken beyond recognition (bad JSON,
 * a misspelled "boot-source") fails loudly instead of being skipped.
 *
 * The same file reached twice (named twice, inside two given directories, through a link) is one
 * spec, listed once under the name it was first reached by.
 */

export interface FoundSpec {
  /** Absolute path. */
  abs: string;
  /** The name to print: the argument, or the argument joined with the path under it. */
  display: string;
  /** A file named on the command line that holds only CPU-template keys: checked as a template. */
  cpuTemplate?: boolean;
}

export interface DiscoveryProblem {
  /** The argument (or the directory under it) that could not be used. */
  display: string;
  code: 'no-specs' | 'dir-unreadable';
  message: string;
}

export interface Discovery {
  /** In command-line order; within a directory, sorted by path. */
  specs: FoundSpec[];
  problems: DiscoveryProblem[];
  /** Files skipped as CPU templates or metadata, for --verbose style reporting and tests. */
  skipped: { display: string; why: 'cpu-config' | 'metadata' | 'cpu-template' }[];
}

const SKIPPED_DIRS = new Set(['node_modules']);
const CPU_TEMPLATE_KEYS = new Set(['kvm_capabilities', 'cpuid_modifiers', 'msr_modifiers', 'reg_modifiers', 'vcpu_features']);

/** The identity of a file: device and inode when it exists, else where it would be. */
const fileKey = (abs: string): string => fileIdentity(abs, true).key;

function isDirectory(abs: string): boolean {
  try {
    return fs.statSync(abs).isDirectory();
  } catch {
    return false;
  }
}

export function discoverSpecs(args: readonly string[], opts: { metadataFile?: string } = {}): Discovery {
  const problems: DiscoveryProblem[] = [];
  const skipped: Discovery['skipped'] = [];
  /** Every candidate, in order, with whether it was named explicitly. */
  const candidates: (FoundSpec & { explicit: boolean; fromDir?: string })[] = [];

  // Not there or a link loop counts as a file: loading it reports why.
  const dirs = new Set(args.filter((arg) => isDirectory(path.resolve(arg))));
  for (const arg of args) {
    const abs = path.resolve(arg);
    if (!dirs.has(arg)) {
      candidates.push({ abs, display: arg, explicit: true });
      continue;
    }
    const found = walk(abs, arg, problems);
    for (const f of found) candidates.push({ ...f, explicit: false, fromDir: arg });
  }

  // A template or metadata file is excluded wherever it is named from; only walked files are
  // excluded (a file named on the command line is checked as the user asked).
  const excluded = new Map<string, 'cpu-config' | 'metadata'>();
  if (opts.metadataFile) excluded.set(fileKey(path.resolve(opts.metadataFile)), 'metadata');
  const peeked = new Map<string, unknown>();
  for (const c of candidates) {
    const value = peek(c.abs);
    peeked.set(c.abs, value);
    const cc = isObject(value) ? value['cpu-config'] : undefined;
    if (typeof cc === 'string') excluded.set(fileKey(path.resolve(path.dirname(c.abs), cc)), 'cpu-config');
  }

  const seen = new Set<string>();
  const specs: FoundSpec[] = [];
  const perDir = new Map<string, number>();
  for (const c of candidates) {
    const key = fileKey(c.abs);
    if (!c.explicit) {
      const why = excluded.get(key) ?? (looksLikeCpuTemplate(peeked.get(c.abs)) ? 'cpu-template' : undefined);
      if (why) {
        skipped.push({ display: c.display, why });
        continue;
      }
    }
    if (c.fromDir !== undefined) perDir.set(c.fromDir, (perDir.get(c.fromDir) ?? 0) + 1);
    if (seen.has(key)) continue;
    seen.add(key);
    specs.push({ abs: c.abs, display: c.display, ...(c.explicit && looksLikeCpuTemplate(peeked.get(c.abs)) ? { cpuTemplate: true } : {}) });
  }

  for (const arg of args) {
    if (dirs.has(arg) && !perDir.get(arg) && !problems.some((p) => p.display === arg)) {
      problems.push({
        display: arg,
        code: 'no-specs',
        message: `no spec files under ${arg}: a spec is a *.json file that is not a CPU template or the --metadata file (hidden files and directories and node_modules are skipped)`,
      });
    }
  }
  return { specs, problems, skipped };
}

/** Recursively lists *.json files under `root`, sorted, entering each real directory once. */
function walk(root: string, display: string, problems: DiscoveryProblem[]): FoundSpec[] {
  const out: FoundSpec[] = [];
  const visited = new Set<string>();
  const visit = (abs: string, shown: string) => {
    let st: fs.Stats;
    try {
      st = fs.statSync(abs);
    } catch {
      return;
    }
    const key = `${st.dev}:${st.ino}`;
    if (visited.has(key)) return;
    visited.add(key);
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(abs, { withFileTypes: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      problems.push({ display: shown, code: 'dir-unreadable', message: `directory ${shown} cannot be read (${code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code ?? String(err)})` });
      return;
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const childAbs = path.join(abs, e.name);
      const childShown = path.join(shown, e.name);
      let dir = e.isDirectory();
      if (e.isSymbolicLink()) {
        try {
          dir = fs.statSync(childAbs).isDirectory();
        } catch {
          dir = false; // dangling or looping link: a *.json one is reported when loaded
        }
      }
      if (dir) {
        if (e.name.startsWith('.') || SKIPPED_DIRS.has(e.name)) continue;
        visit(childAbs, childShown);
      } else if (e.name.endsWith('.json') && !e.name.startsWith('.')) {
        out.push({ abs: childAbs, display: childShown });
      }
    }
  };
  visit(root, display);
  return out;
}

/** The parsed contents of a small JSON file, or undefined when it is unreadable, too big or not JSON. */
function peek(abs: string): unknown {
  try {
    // The same safe reader as for specs: a FIFO or device swapped in is refused, never waited on.
    return JSON.parse(readText(abs, 'spec file', MAX_CONFIG_FILE_BYTES));
  } catch {
    return undefined;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function looksLikeCpuTemplate(v: unknown): boolean {
  if (!isObject(v)) return false;
  const keys = Object.keys(v);
  return keys.length > 0 && keys.every((k) => CPU_TEMPLATE_KEYS.has(k));
}
