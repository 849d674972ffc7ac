/**
 * ajv settings shared by the run-time compiler and the build-time precompiler. inlineRefs off:
 * each definition is one function, compiled (or taken from V8's code cache) only when a spec
 * uses it, instead of a copy inlined at every reference (half the code a small spec's start loads).
 */
export const AJV_OPTIONS = { allErrors: true, verbose: true, strict: true, allowUnionTypes: true, inlineRefs: false } as const;

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

/** Keywords that only annotate a schema (for editors and docs); validation never reads them. */
const ANNOTATIONS = new Set(['description', 'markdownDescription', 'title', 'default', '$comment']);
/** Keywords whose value maps names to schemas. */
const SCHEMA_MAPS = new Set(['properties', 'definitions', 'patternProperties']);
/** Keywords whose value is data, not a schema. */
const DATA = new Set(['examples', 'enum', 'const']);

/**
 * The schema without its annotations: what the precompiled validator embeds (its schema objects
 * are built at every start; descriptions are most of their text), and the form error reporting
 * compares schemas in, so both the precompiled and the run-time compiled validator match.
 */
export function withoutAnnotations(schema: unknown): unknown {
  const walk = (v: unknown, isMap: boolean): unknown => {
    if (Array.isArray(v)) return v.map((item) => walk(item, false));
    if (v === null || typeof v !== 'object') return v;
    const out: Record<string, unknown> = {};
    for (const [k, item] of Object.entries(v)) {
      if (isMap) out[k] = walk(item, false);
      else if (ANNOTATIONS.has(k)) continue;
      else out[k] = DATA.has(k) ? item : walk(item, SCHEMA_MAPS.has(k));
    }
    return out;
  };
  return walk(schema, false);
}
