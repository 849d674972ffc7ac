import { SpecInvalidError, SpecIssue } from '../config/issues';
import { EXIT_FAILURE, FcRunError } from '../errors';
import { UsageError } from './args';
import { formatIssue, issueJson, painterFor, printable, unicodeEscape } from './format';
import type { Output } from './output';

export interface Io {
  out: Output;
  err: Output;
}

/**
 * How a command reports: lines for people, or one JSON record per line (`--json-lines`) for log
 * pipelines. `--strict` turns every warning into an error (exit 2), for CI.
 */
export interface Reporting {
  jsonLines: boolean;
  strict: boolean;
}

export function write(stream: Output, text: string): void {
  stream.write(text.endsWith('\n') ? text : `${text}\n`);
}

/** One JSON record on one line; keys with undefined values are left out. */
export function writeRecord(stream: Output, record: Record<string, unknown>): void {
  // JSON escapes C0 controls but not C1 (U+0080-U+009F), which some terminals act on: escaped too.
  // eslint-disable-next-line no-control-regex
  stream.write(`${JSON.stringify(record).replace(/[\u0080-\u009f]/g, unicodeEscape)}\n`);
}

/** Under --strict a warning counts as an error: the issue says so itself. */
export function applyStrict(issues: SpecIssue[], strict: boolean): SpecIssue[] {
  if (!strict) return issues;
  return issues.map((i) => (i.severity === 'warning' ? { ...i, severity: 'error', message: `${i.message} (a warning, refused under --strict)` } : i));
}

/** Prints issues (warnings included) to stderr, as lines or records. */
export function reportIssues(io: Io, issues: SpecIssue[], rep: Reporting): void {
  if (rep.jsonLines) {
    for (const i of issues) writeRecord(io.err, { type: 'issue', ...issueJson(i) });
    return;
  }
  const c = painterFor(io.err);
  for (const i of issues) write(io.err, formatIssue(i, c));
}

/** A one-line status message (what the VM did, where a jail is), as a line or a record. */
export function reportStatus(io: Io, rep: Reporting, event: string, message: string, fields: Record<string, unknown> = {}): void {
  if (rep.jsonLines) writeRecord(io.err, { type: 'status', event, message, ...fields });
  else write(io.err, painterFor(io.err).dim(`fc-run: ${printable(message)}`));
}

/**
 * The warnings of a spec about to run (`run`, the jail): refused under --strict, else shown (unless
 * `show` is false: shown already, for the user's file).
 */
export function showSpecWarnings(io: Io, rep: Reporting, file: string, issues: SpecIssue[], show = true): void {
  const warnings = applyStrict(issues.filter((w) => w.severity === 'warning'), rep.strict);
  if (rep.strict && warnings.length > 0) throw new SpecInvalidError(file, warnings);
  if (show) reportIssues(io, warnings, rep);
}

/** Turns a failure into its exit code after telling the user what happened. */
export function handleFailure(io: Io, err: unknown, rep: Reporting): number {
  const c = painterFor(io.err);
  if (err instanceof SpecInvalidError) {
    reportIssues(io, err.issues, rep);
    const n = err.issues.filter((i) => i.severity === 'error').length;
    if (rep.jsonLines) writeRecord(io.err, { type: 'result', file: err.file, valid: false, errors: n, exit: err.exitCode });
    else write(io.err, c.red(`${printable(err.file)}: invalid spec (${n} error${n === 1 ? '' : 's'})`));
    return err.exitCode;
  }
  if (err instanceof FcRunError) {
    if (rep.jsonLines) writeRecord(io.err, { type: 'error', code: err.code, message: err.message, exit: err.exitCode });
    else {
      write(io.err, `${c.red.bold('fc-run:')} ${printable(err.message)}`);
      if (err instanceof UsageError) write(io.err, `Run "fc-run ${err.command ? `${err.command} ` : ''}--help" for usage.`);
    }
    return err.exitCode;
  }
  const text = (err as Error)?.stack ?? String(err);
  if (rep.jsonLines) writeRecord(io.err, { type: 'error', code: 'internal', message: text, exit: EXIT_FAILURE });
  else write(io.err, `${c.red.bold('fc-run: internal error:')} ${text}`);
  return EXIT_FAILURE;
}
