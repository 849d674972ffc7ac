import { IssueList, SpecIssue } from './issues';
import { checkSchema, KEY_ISSUE_CODES } from './schema';
import { checkCpuConfig } from './rules';
import { SpecSource } from './source';
import { findOversized, oversizedMessage } from './size-limits';
import { readText } from './read';
import { FcRunError } from '../errors';
import type { CpuConfig } from './vm-spec.generated';

/**
 * Validates a CPU template file referenced by "cpu-config" (or named to `validate`). Its issues
 * point into that file; `more` adds checks of the valid template, located there too. Returns the
 * template when it is valid.
 */
export function checkCpuConfigFile(file: string, shown: string, extra: SpecIssue[], more?: (template: CpuConfig, issues: IssueList) => void): CpuConfig | undefined {
  let text: string;
  try {
    text = readText(file, 'CPU template file');
  } catch (err) {
    if (!(err instanceof FcRunError)) throw err;
    extra.push({ severity: 'error', code: err.code, path: [], file: shown, line: 1, column: 1, message: err.message, hint: 'point "cpu-config" at a CPU template JSON file' });
    return undefined;
  }
  const parsed = SpecSource.parse(shown, text, { wholeNumbers: true });
  if (!parsed.source) {
    extra.push(...parsed.issues);
    return undefined;
  }
  const source = parsed.source;
  const issues = new IssueList();
  const oversized = findOversized(source.value);
  if (oversized) issues.error('too-many-items', oversized.at, oversizedMessage(oversized, 'template'), 'shorten the template');
  else checkSchema(source.value, issues, 'CpuConfig');
  if (!issues.hasErrors) checkCpuConfig(source.value as CpuConfig, [], issues);
  if (!issues.hasErrors && more) more(source.value as CpuConfig, issues);
  extra.push(...issues.items.map((i) => ({ ...i, file: shown, ...source.locate(i.path, KEY_ISSUE_CODES.has(i.code) ? 'key' : 'value') })));
  return issues.hasErrors ? undefined : (source.value as CpuConfig);
}
