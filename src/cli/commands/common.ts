import type { LoadOptions } from '../../config/validate';
import { DEFAULT_MMDS_SIZE_LIMIT } from '../../config/resolved';
import type { OptionSpec, ParsedArgs } from '../args';
import type { Reporting } from '../io';

/** Options every command that reads a spec takes. */
export const SPEC_OPTIONS: OptionSpec[] = [
  { name: 'metadata', kind: 'string', valueName: 'FILE', describe: 'JSON file with the initial MMDS contents (instead of the spec\'s "mmds" key)' },
  {
    name: 'mmds-size-limit',
    kind: 'integer',
    min: 1,
    max: 64 * 1024 * 1024,
    valueName: 'BYTES',
    describe: `Largest MMDS contents accepted, in bytes of compact JSON (default ${DEFAULT_MMDS_SIZE_LIMIT})`,
  },
];

/** Options that shape what a command prints. */
export const REPORT_OPTIONS: OptionSpec[] = [
  { name: 'strict', kind: 'flag', describe: 'Treat every warning as an error (exit 2), for CI' },
  { name: 'json-lines', kind: 'flag', describe: 'Print issues and status as one JSON record per line (for log pipelines)' },
];

export function reportingOf(args: ParsedArgs): Reporting {
  return { jsonLines: args.options['json-lines'] === true, strict: args.options.strict === true };
}

/**
 * The MMDS size limit the options give: --mmds-size-limit, else (as Firecracker's main.rs does)
 * --http-api-max-payload-size for the commands that take it; undefined for the default.
 */
export function mmdsSizeLimitOf(options: Readonly<Record<string, unknown>>): number | undefined {
  return (options['mmds-size-limit'] ?? options['http-api-max-payload-size']) as number | undefined;
}

export function loadOptionsOf(args: ParsedArgs, skipFiles = false): LoadOptions {
  return {
    skipFiles,
    metadataFile: args.options.metadata as string | undefined,
    mmdsSizeLimit: mmdsSizeLimitOf(args.options),
  };
}

/** Firecracker's --id rule: 1 to 64 characters, letters, digits and '-'. */
export function instanceIdProblem(id: string): string | undefined {
  if (id.length > 64) return `must be at most 64 characters, got ${id.length}`;
  if (!/^[A-Za-z0-9-]+$/.test(id)) return 'may contain only letters, digits and "-"';
  return undefined;
}
