import * as path from 'node:path';
import { IssueList, SpecInvalidError, SpecIssue } from './issues';
import { checkSchema, KEY_ISSUE_CODES } from './schema';
import { checkRules } from './rules';
import { resolveSpec } from './resolve';
import { SpecSource } from './source';
import { DEFAULT_MMDS_SIZE_LIMIT, ResolvedSpec } from './resolved';
import type { VmSpec } from './vm-spec.generated';
import { MAX_CONFIG_FILE_BYTES, readText } from './read';
import { checkCollisions, FlagOutputs } from './collisions';
import { findOversized, MAX_REPORTED_ISSUES, oversizedMessage } from './size-limits';

export interface LoadOptions {
  /** Do not require kernel, initrd, drive and template files to exist (validating stored specs in CI). */
  skipFiles?: boolean;
  /** A JSON file with the initial MMDS contents (`--metadata`). */
  metadataFile?: string;
  /** Largest MMDS contents accepted, in bytes of compact JSON. */
  mmdsSizeLimit?: number;
  /** The spec's name as the user gave it, for messages (default: the path loaded). */
  displayFile?: string;
  /** Outputs named on the command line (they replace the spec's), checked against every input. */
  flagOutputs?: FlagOutputs;
}

export interface LoadedSpec {
  spec: ResolvedSpec;
  /** The spec's name as the user gave it. */
  displayFile: string;
  /** Everything suspicious that did not stop validation. */
  warnings: SpecIssue[];
  /** Maps a path in the spec to its file position, for issues found after validation (planning). */
  locate(issue: Omit<SpecIssue, 'file' | 'line' | 'column'>): SpecIssue;
}

/** Refuses a loaded spec for reasons found after loading: its warnings and these issues, located in it. */
export function failSpec(loaded: LoadedSpec, issues: Omit<SpecIssue, 'file' | 'line' | 'column'>[]): never {
  throw new SpecInvalidError(loaded.displayFile, [...loaded.warnings, ...issues.map(loaded.locate)]);
}

/** Reads, validates and resolves a spec file. Throws SpecInvalidError listing every problem found. */
export function loadSpecFile(file: string, opts: LoadOptions = {}): LoadedSpec {
  const abs = path.resolve(file);
  return loadSpecText(abs, readText(abs, 'spec file'), { displayFile: file, ...opts });
}


/**
 * Validates spec text. `file` is where it came from: relative paths in the spec resolve against
 * its directory and errors carry its name and positions.
 */
export function loadSpecText(abs: string, text: string, opts: LoadOptions = {}): LoadedSpec {
  // Messages name the spec as the user gave it; paths inside it resolve against its real place.
  const file = opts.displayFile ?? abs;
  const parsed = SpecSource.parse(file, text, { wholeNumbers: true, freeForm: FREE_FORM_SECTIONS });
  if (!parsed.source) throw new SpecInvalidError(file, parsed.issues);
  const source = parsed.source;
  const issues = new IssueList();
  // Issues from other files (a cpu-config template, --metadata) already carry their own positions.
  const extra: SpecIssue[] = [];

  const value = withoutNulls(source.value, []);
  // Before the schema: a spec of 300,000 drives would get an error per field of each, gigabytes
  // of them. No section of a real spec comes close to the limit.
  // The spec as written: members given as null count too (they are checked for unknown keys).
  const oversized = findOversized(source.value, FREE_FORM);
  if (oversized) {
    issues.error(
      'too-many-items',
      oversized.at,
      oversizedMessage(oversized, 'spec'),
      'a microVM has at most 19 virtio devices; shorten the lists',
    );
  } else {
    checkSchema(value.result, issues, undefined, value.nulled, source.value);
  }
  const schemaOk = !issues.hasErrors;
  let resolved: ResolvedSpec | undefined;
  if (schemaOk) {
    const spec = value.result as VmSpec;
    const baseDir = path.dirname(abs);
    checkRules(spec, issues, { baseDir, skipFiles: opts.skipFiles ?? false });
    const limit = opts.mmdsSizeLimit ?? DEFAULT_MMDS_SIZE_LIMIT;
    const metadata = opts.metadataFile ? loadMetadata(opts.metadataFile, spec, issues, extra, limit) : undefined;
    if (!issues.hasErrors) {
      resolved = resolveSpec(spec, { baseDir, specFile: abs, metadata, skipFiles: opts.skipFiles ?? false, displayDir: path.dirname(file) }, extra);
      checkCollisions(resolved, issues, { specFile: abs, metadataFile: opts.metadataFile, flags: opts.flagOutputs, readFiles: !opts.skipFiles });
      if (resolved.mmds && resolved.mmds.sizeBytes > limit) {
        issues.error(
          'mmds-too-large',
          spec.mmds !== undefined ? ['mmds'] : [],
          `MMDS contents are ${resolved.mmds.sizeBytes} bytes (compact JSON); the limit is ${limit}`,
          'shrink the metadata or raise the limit with --mmds-size-limit',
        );
      }
    }
  }

  const locate = (i: Omit<SpecIssue, 'file' | 'line' | 'column'>): SpecIssue => ({
    ...i,
    file,
    ...source.locate(i.path, KEY_ISSUE_CODES.has(i.code) ? 'key' : 'value'),
  });
  let all: SpecIssue[] = [...issues.items.map(locate), ...extra];
  all.sort((a, b) => (a.file === b.file ? (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0) : 0));
  if (all.length > MAX_REPORTED_ISSUES) {
    const rest = all.slice(MAX_REPORTED_ISSUES);
    all = [
      ...all.slice(0, MAX_REPORTED_ISSUES),
      { severity: rest.some((i) => i.severity === 'error') ? 'error' : 'warning', code: 'more-issues', path: [], file, message: `and ${rest.length} more problems like these (only the first ${MAX_REPORTED_ISSUES} are shown)` },
    ];
  }
  if (!resolved || all.some((i) => i.severity === 'error')) throw new SpecInvalidError(file, all);
  return { spec: resolved, displayFile: file, warnings: all, locate };
}

/** Top-level keys holding free-form data (any JSON: null is a value, numbers may be fractional). */
const FREE_FORM_SECTIONS = ['mmds'];
const FREE_FORM = new Set(FREE_FORM_SECTIONS);
/**
 * Top-level keys whose contents keep their nulls, for the schema to refuse: an inline CPU template
 * is checked as a template file is (serde refuses null in a template: "expected a sequence").
 * The key itself may still be null (absent).
 */
const NULLS_KEPT = new Set(['cpu-config']);

/**
 * Firecracker (serde) reads `"field": null` as "field absent", and its own example configs use
 * that; so does fc-run, everywhere except inside free-form data such as the MMDS contents.
 * Returns a copy without those members, and the paths that were null (for error messages).
 */
export function withoutNulls(value: unknown, at: (string | number)[]): { result: unknown; nulled: Set<string> } {
  const nulled = new Set<string>();
  const walk = (v: unknown, path: (string | number)[]): unknown => {
    if (Array.isArray(v)) return v.map((item, i) => walk(item, [...path, i]));
    if (v === null || typeof v !== 'object') return v;
    const out: Record<string, unknown> = {};
    for (const [k, item] of Object.entries(v)) {
      // A free-form section itself may be null (absent) too; nulls inside it are its data.
      if (item === null) {
        nulled.add(JSON.stringify([...path, k]));
        continue;
      }
      // defineProperty, not assignment: a "__proto__" key must stay an own (unknown) key instead
      // of replacing the copy's prototype, whose keys would then pass for members of the spec.
      Object.defineProperty(out, k, {
        value: path.length === 0 && (FREE_FORM.has(k) || NULLS_KEPT.has(k)) ? item : walk(item, [...path, k]),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  };
  return { result: walk(value, at), nulled };
}

function loadMetadata(file: string, spec: VmSpec, issues: IssueList, extra: SpecIssue[], sizeLimit: number): { source: string; data: Record<string, unknown> } | undefined {
  const abs = path.resolve(file);
  if (spec.mmds !== undefined) {
    issues.error('mmds-conflict', ['mmds'], `MMDS contents are given twice: in the spec's "mmds" key and in --metadata ${file}`, 'keep one of them');
    return undefined;
  }
  const parsed = SpecSource.parse(file, readText(abs, 'metadata file', Math.max(MAX_CONFIG_FILE_BYTES, sizeLimit)));
  if (!parsed.source) {
    extra.push(...parsed.issues);
    return undefined;
  }
  const data = parsed.source.value;
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    extra.push({ severity: 'error', code: 'type', path: [], file, line: 1, column: 1, message: 'MMDS metadata must be a JSON object', hint: 'wrap the contents in { }' });
    return undefined;
  }
  return { source: abs, data: data as Record<string, unknown> };
}

