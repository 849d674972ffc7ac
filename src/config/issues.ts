import { EXIT_INVALID_SPEC, FcRunError } from '../errors';

/** A location in the spec: a JSON path plus, when the source text is known, line and column (1-based). */
export interface SpecLocation {
  /** Path segments from the document root, e.g. ['drives', 1, 'drive_id']. */
  path: (string | number)[];
  file?: string;
  line?: number;
  column?: number;
}

export type Severity = 'error' | 'warning';

/** One thing wrong (or suspicious) in a spec: what, where, and how to fix it. */
export interface SpecIssue extends SpecLocation {
  severity: Severity;
  /** Stable, greppable identifier, e.g. "duplicate-id". */
  code: string;
  message: string;
  /** How to fix it. */
  hint?: string;
}

/** Renders a path as a JSON pointer ("/drives/1/drive_id"); the root is "/". */
export function pointer(path: readonly (string | number)[]): string {
  if (path.length === 0) return '/';
  return path.map((p) => '/' + String(p).replace(/~/g, '~0').replace(/\//g, '~1')).join('');
}

export class SpecInvalidError extends FcRunError {
  constructor(
    readonly file: string,
    readonly issues: SpecIssue[],
  ) {
    const errors = issues.filter((i) => i.severity === 'error');
    super('spec-invalid', `${file}: ${errors.length} error(s) in the spec`, EXIT_INVALID_SPEC);
  }
}

/** Collects issues while rules run, so one pass reports everything wrong, not just the first. */
export class IssueList {
  readonly items: SpecIssue[] = [];

  error(code: string, path: (string | number)[], message: string, hint?: string): void {
    this.items.push({ severity: 'error', code, path, message, hint });
  }

  warning(code: string, path: (string | number)[], message: string, hint?: string): void {
    this.items.push({ severity: 'warning', code, path, message, hint });
  }

  get hasErrors(): boolean {
    return this.items.some((i) => i.severity === 'error');
  }
}
