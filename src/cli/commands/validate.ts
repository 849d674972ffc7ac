import { loadSpecFile } from '../../config/validate';
import { SpecInvalidError, SpecIssue } from '../../config/issues';
import { checkRunnable } from '../../boot';
import { EXIT_FAILURE, EXIT_INVALID_SPEC, EXIT_OK, FcRunError } from '../../errors';
import { CommandSpec, ParsedArgs, UsageError } from '../args';
import { applyStrict, Io, reportIssues, write, writeRecord } from '../io';
import { issueJson, painterFor } from '../format';
import { loadOptionsOf, REPORT_OPTIONS, reportingOf, SPEC_OPTIONS } from './common';

export const VALIDATE_SPEC: CommandSpec = {
  name: 'validate',
  usage: 'fc-run validate [options] <spec...>',
  summary:
    'Check specs the way `run` would before it touches KVM: the schema, the semantic rules, the boot plan (kernel headers and layout) and the files and sockets the VM would use. One line per file.',
  positionals: [{ name: 'spec', describe: 'Spec files', variadic: true }],
  options: [
    { name: 'skip-files', kind: 'flag', describe: 'Read no file the spec names (kernel, initrd, drives, templates): for CI on stored specs whose artifacts live elsewhere; everything else is still checked' },
    { name: 'json', kind: 'flag', describe: 'One JSON document with every result' },
    ...SPEC_OPTIONS,
    ...REPORT_OPTIONS,
  ],
  examples: [
    ['fc-run validate examples/*.json', 'validate every example, with its files'],
    ['fc-run validate --skip-files --strict --json-lines specs/*.json', 'CI check of stored specs whose artifacts live elsewhere'],
  ],
  notes: 'Exit status: 0 all valid, 2 some spec invalid, 1 some file unreadable or a usage error.',
};

interface Outcome {
  file: string;
  valid: boolean;
  errors: SpecIssue[];
  warnings: SpecIssue[];
  /** A failure that is not about the spec's contents (an unreadable file). */
  failure?: FcRunError;
}

function check(file: string, args: ParsedArgs, skipFiles: boolean, strict: boolean): Outcome {
  try {
    const loaded = loadSpecFile(file, loadOptionsOf(args, skipFiles));
    const issues = applyStrict(checkRunnable(loaded, !skipFiles).filter((w) => w.severity === 'warning'), strict);
    const errors = issues.filter((i) => i.severity === 'error');
    return { file, valid: errors.length === 0, errors, warnings: issues.filter((i) => i.severity === 'warning') };
  } catch (err) {
    if (err instanceof SpecInvalidError) {
      const issues = applyStrict(err.issues, strict);
      return { file, valid: false, errors: issues.filter((i) => i.severity === 'error'), warnings: issues.filter((i) => i.severity === 'warning') };
    }
    if (err instanceof FcRunError) return { file, valid: false, errors: [], warnings: [], failure: err };
    throw err;
  }
}

export function validateCommand(io: Io, args: ParsedArgs): number {
  const rep = reportingOf(args);
  const json = args.options.json === true;
  if (json && rep.jsonLines) throw new UsageError('--json and --json-lines are alternatives: choose one', 'validate');
  const skipFiles = args.options['skip-files'] === true;
  const outcomes = args.positionals.map((file) => check(file, args, skipFiles, rep.strict));
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
        ...(r.failure ? { code: r.failure.code, message: r.failure.message } : {}),
      });
    } else if (r.failure) {
      write(io.out, `${c.red('FAIL')}  ${r.file}: ${r.failure.message}`);
    } else if (r.valid) {
      write(io.out, `${c.green('ok')}    ${r.file}${r.warnings.length ? c.yellow(` (${plural(r.warnings.length, 'warning')})`) : ''}`);
      reportIssues(io, r.warnings, rep);
    } else {
      write(io.out, `${c.red('FAIL')}  ${r.file} (${plural(r.errors.length, 'error')})`);
      reportIssues(io, [...r.errors, ...r.warnings].sort(byPosition), rep);
    }
  }
  const invalid = outcomes.some((r) => !r.valid && !r.failure);
  const failed = outcomes.some((r) => r.failure);
  if (json) {
    const files = outcomes.map((r) => ({
      file: r.file,
      valid: r.valid,
      errors: r.failure ? [{ severity: 'error', code: r.failure.code, file: r.file, message: r.failure.message }] : r.errors.map(issueJson),
      warnings: r.warnings.map(issueJson),
    }));
    write(io.out, JSON.stringify({ valid: !invalid && !failed, files }, null, 2));
  }
  return invalid ? EXIT_INVALID_SPEC : failed ? EXIT_FAILURE : EXIT_OK;
}

function byPosition(a: SpecIssue, b: SpecIssue): number {
  return a.file === b.file ? (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0) : 0;
}
