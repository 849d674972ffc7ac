import { IssueList, SpecIssue } from './issues';
import { checkSchema } from './schema';
import { checkCpuConfig } from './rules';
import { SpecSource } from './source';
import { readText } from './read';
import type { CpuConfig } from './vm-spec.generated';

/**
 * Validates a CPU template file referenced by "cpu-config". Its issues point into that file.
 * Returns the template when it is valid.
 */
export function checkCpuConfigFile(file: string, extra: SpecIssue[]): CpuConfig | undefined {
  const parsed = SpecSource.parse(file, readText(file, 'CPU template file'));
  if (!parsed.source) {
    extra.push(...parsed.issues);
    return undefined;
  }
  const source = parsed.source;
  const issues = new IssueList();
  checkSchema(source.value, issues, 'CpuConfig');
  if (!issues.hasErrors) checkCpuConfig(source.value as CpuConfig, [], issues);
  extra.push(...issues.items.map((i) => ({ ...i, file, ...source.locate(i.path, i.code === 'unknown-property' ? 'key' : 'value') })));
  return issues.hasErrors ? undefined : (source.value as CpuConfig);
}
