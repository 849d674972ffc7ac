/** ajv settings shared by the run-time compiler and the build-time precompiler. */
export const AJV_OPTIONS = { allErrors: true, verbose: true, strict: true, allowUnionTypes: true } as const;

/** An annotation for humans: what a string matching "pattern" looks like, used in error messages. */
export const CUSTOM_KEYWORDS = [{ keyword: 'x-pattern-hint', schemaType: 'string' as const }];
