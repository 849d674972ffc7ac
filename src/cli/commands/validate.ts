import * as path from 'node:path';
import { LoadedSpec, loadSpecFile } from '../../config/validate';
import { checkCpuConfigFile } from '../../config/template-file';
import { SpecInvalidError, SpecIssue } from '../../config/issues';
import { discoverSpecs } from '../../config/discover';
import { checkFleet } from '../../config/fleet';
import { checkRunnable } from '../../boot';
import { refuseTemplateParts } from '../../boot/plan';
import { EXIT_FAILURE, EXIT_INVALID_SPEC, EXIT_OK, FcRunError } from '../../errors';
import { CommandSpec, ParsedArgs, UsageError } from '../args';
import { applyStrict, Io, reportIssues, write, writeRecord } from '../io';
import { issueJson, painterFor, printable } from '../format';
import { loadOptionsOf, REPORT_OPTIONS, reportingOf, SPEC_OPTIONS } from './common';

export const VALIDATE_SPEC: CommandSpec = {
  name: 'validate',
  usage: 'fc-run validate [options] <spec|dir...>',
  summary:
    'Check specs the way `run` would before it touches KVM: the schema, the semantic rules, the boot plan (kernel headers and layout) and the files and sockets the VM would use. ' +
    'Directories are searched recursively for *.json specs. The specs are then checked against each other as VMs sharing one host: no TAP device, guest MAC, log, metrics or vsock path, or writable drive used by two of them. One line per file, then a summary.',
  positionals: [{ name: 'spec', describe: 'Spec files, or directories to search for *.json specs', variadic: true }],
  options: [
    { name: 'skip-files', kind: 'flag', describe: 'Read no file the spec names (kernel, initrd, drives, templates): for CI on stored specs whose artifacts live elsewhere; everything else is still checked' },
    { name: 'independent', kind: 'flag', describe: 'The specs are alternatives, not VMs that run together: skip the checks across specs' },
    { name: 'json', kind: 'flag', describe: 'One JSON document with every result and a summary' },
    ...SPEC_OPTIONS,
    ...REPORT_OPTIONS,
  ],
  examples: [
    ['fc-run validate examples/*.json', 'validate every example, with its files'],
    ['fc-run validate --skip-files --strict --json-lines specs/', 'CI check of a repository of stored specs whose artifacts live elsewhere'],
  ],
  notes:
    'A file named on the command line that holds only CPU-template keys (cpuid_modifiers, msr_modifiers, kvm_capabilities, ...) is checked as a CPU template. ' +
    'In a directory, every *.json file is a spec except a CPU template some spec names in "cpu-config", the --metadata file, and a file holding only CPU-template keys; hidden files and directories and node_modules are skipped. ' +
    'A spec that fails the schema or the rules is left out of the checks across specs.\n' +
    'Exit status: 0 all valid, 2 some spec invalid, 1 some file unreadable, a directory without specs, or a usage error.',
};

interface Outcome {
  file: string;
  /** 'argument': a directory that could not be searched or held no spec. */
  kind: 'spec' | 'argument';
  valid: boolean;
  errors: SpecIssue[];
  warnings: SpecIssue[];
  /** A failure that is not about the spec's contents (an unreadable file). */
  failure?: FcRunError;
  /** Set when the spec loaded far enough for its resources to be known (for the checks across specs). */
  loaded?: LoadedSpec;
  /** The file was checked as a CPU template, not a spec. */
  cpuTemplate?: boolean;
}

/**
 * A CPU template file named on the command line (only template keys at its top level, as
 * Firecracker's --cpu-template files and "cpu-config" paths hold): checked as a spec's template is.
 */
function checkTemplate(file: string, strict: boolean): Outcome {
  const extra: SpecIssue[] = [];
  // What run refuses in a template ("cpu-config" naming this file) is refused here too.
  checkCpuConfigFile(path.resolve(file), file, extra, (t, issues) =>
    refuseTemplateParts(t, (key) => [key], (code, at, message, hint) => issues.error(code, at, message, hint)),
  );
  const failure = extra.find((i) => i.code === 'file-unreadable' || i.code === 'file-type' || i.code === 'file-too-large');
  if (failure) return { file, kind: 'spec', valid: false, errors: [], warnings: [], failure: new FcRunError(failure.code, failure.message, EXIT_FAILURE) };
  const issues = applyStrict(extra, strict);
  const errors = issues.filter((i) => i.severity === 'error');
  return { file, kind: 'spec', cpuTemplate: true, valid: errors.length === 0, errors, warnings: issues.filter((i) => i.severity === 'warning') };
}

function check(file: string, args: ParsedArgs, skipFiles: boolean, strict: boolean): Outcome {
  let loaded: LoadedSpec | undefined;
  try {
    loaded = loadSpecFile(file, loadOptionsOf(args, skipFiles));
    const issues = applyStrict(checkRunnable(loaded, !skipFiles).filter((w) => w.severity === 'warning'), strict);
    const errors = issues.filter((i) => i.severity === 'error');
    return { file, kind: 'spec', valid: errors.length === 0, errors, warnings: issues.filter((i) => i.severity === 'warning'), loaded };
  } catch (err) {
    if (err instanceof SpecInvalidError) {
      const issues = applyStrict(err.issues, strict);
      return { file, kind: 'spec', valid: false, errors: issues.filter((i) => i.severity === 'error'), warnings: issues.filter((i) => i.severity === 'warning'), loaded };
    }
    if (err instanceof FcRunError) return { file, kind: 'spec', valid: false, errors: [], warnings: [], failure: err };
    throw err;
  }
}

export function validateCommand(io: Io, args: ParsedArgs): number {
  const rep = reportingOf(args);
  const json = args.options.json === true;
  if (json && rep.jsonLines) throw new UsageError('--json and --json-lines are alternatives: choose one', 'validate');
  const skipFiles = args.options['skip-files'] === true;
  const found = discoverSpecs(args.positionals, { metadataFile: args.options.metadata as string | undefined });
  const outcomes: Outcome[] = found.specs.map((s) => (s.cpuTemplate ? checkTemplate(s.display, rep.strict) : check(s.display, args, skipFiles, rep.strict)));
  for (const p of found.problems) {
    outcomes.push({ file: p.display, kind: 'argument', valid: false, errors: [], warnings: [], failure: new FcRunError(p.code, p.message, EXIT_FAILURE) });
  }
  if (args.options.independent !== true) addFleetIssues(outcomes, skipFiles);

  const c = painterFor(io.out);
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  for (const r of outcomes) {
    if (json) continue;
    if (rep.jsonLines) {
      for (const i of [...r.errors, ...r.warnings]) writeRecord(io.out, { type: 'issue', ...issueJson(i) });
      writeRecord(io.out, {
        type: 'result',
        file: r.file,
        valid: r.valid,
        errors: r.failure ? 1 : r.errors.length,
        warnings: r.warnings.length,
        ...(r.cpuTemplate ? { kind: 'cpu-template' } : {}),
        ...(r.failure ? { code: r.failure.code, message: r.failure.message } : {}),
      });
    } else if (r.failure) {
      write(io.out, `${c.red('FAIL')}  ${printable(r.failure.code === 'no-specs' || r.failure.code === 'dir-unreadable' ? r.failure.message : `${r.file}: ${r.failure.message}`)}`);
    } else if (r.valid) {
      write(io.out, `${c.green('ok')}    ${printable(r.file)}${r.cpuTemplate ? ' (CPU template)' : ''}${r.warnings.length ? c.yellow(` (${plural(r.warnings.length, 'warning')})`) : ''}`);
      reportIssues(io, r.warnings, rep);
    } else {
      write(io.out, `${c.red('FAIL')}  ${printable(r.file)} (${r.cpuTemplate ? 'CPU template, ' : ''}${plural(r.errors.length, 'error')})`);
      reportIssues(io, [...r.errors, ...r.warnings].sort(byPosition), rep);
    }
  }

  const summary = summarize(outcomes);
  if (json) {
    const files = outcomes.map((r) => ({
      file: r.file,
      ...(r.cpuTemplate ? { kind: 'cpu-template' } : {}),
      valid: r.valid,
      errors: r.failure ? [{ severity: 'error', code: r.failure.code, file: r.file, message: r.failure.message }] : r.errors.map(issueJson),
      warnings: r.warnings.map(issueJson),
    }));
    write(io.out, JSON.stringify({ valid: summary.valid, files, summary }, null, 2));
  } else if (rep.jsonLines) {
    writeRecord(io.out, { type: 'summary', ...summary });
  } else {
    const counts = [`${summary.ok} ok`];
    if (summary.invalid) counts.push(`${summary.invalid} invalid`);
    if (summary.unreadable) counts.push(`${summary.unreadable} unreadable`);
    const issues = summary.errors || summary.warnings ? ` (${plural(summary.errors, 'error')}, ${plural(summary.warnings, 'warning')})` : '';
    const extra = summary.problems ? `; ${plural(summary.problems, 'directory problem')}` : '';
    const line = (summary.specs ? `${plural(summary.specs, 'spec')}: ${counts.join(', ')}${issues}` : 'no specs checked') + extra;
    write(io.out, summary.valid ? line : c.red(line));
  }
  return summary.invalid ? EXIT_INVALID_SPEC : summary.unreadable || summary.problems ? EXIT_FAILURE : EXIT_OK;
}

/** Specs that loaded are checked against each other as VMs on one host; conflicts make both invalid. */
function addFleetIssues(outcomes: Outcome[], skipFiles: boolean): void {
  const members = outcomes.filter((o): o is Outcome & { loaded: LoadedSpec } => o.loaded !== undefined);
  if (members.length < 2) return;
  const issues = checkFleet(members.map((m) => m.loaded), { readFiles: !skipFiles });
  members.forEach((m, i) => {
    if (issues[i].length === 0) return;
    m.errors.push(...issues[i]);
    m.valid = false;
  });
}

function summarize(outcomes: Outcome[]) {
  const specs = outcomes.filter((o) => o.kind === 'spec');
  const s = {
    specs: specs.length,
    ok: specs.filter((o) => o.valid).length,
    invalid: specs.filter((o) => !o.valid && !o.failure).length,
    unreadable: specs.filter((o) => o.failure).length,
    /** Arguments that named no spec (an empty or unreadable directory). */
    problems: outcomes.length - specs.length,
    errors: outcomes.reduce((n, o) => n + (o.failure ? 1 : o.errors.length), 0),
    warnings: outcomes.reduce((n, o) => n + o.warnings.length, 0),
  };
  return { valid: s.ok === s.specs && s.problems === 0, ...s };
}

function byPosition(a: SpecIssue, b: SpecIssue): number {
  return a.file === b.file ? (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0) : 0;
}
