/** ajv settings shared by the run-time compiler and the build-time precompiler. */
export const AJV_OPTIONS = { allErrors: true, verbose: true, strict: true, allowUnionTypes: true } as const;

/** An annotation for humans: what a string matching "pattern" looks like, used in error messages. */
/**
 * The schema's definitions fc-run validates on their own (besides the whole spec): a CPU template
 * file is a CpuConfig. Only these are precompiled, so the validator module stays small.
 */
export const STANDALONE_DEFINITIONS = ['CpuConfig'] as const;

export const CUSTOM_KEYWORDS = [
  { keyword: 'x-pattern-hint', schemaType: 'string' as const },
  // Firecracker ignores unknown properties in this object: fc-run warns and drops them.
  { keyword: 'x-ignore-unknown-properties', schemaType: 'boolean' as const },
];
