/**
 * Nesting limits for JSON that comes from outside (spec files, templates, metadata files, API
 * bodies). Every recursive walker in fc-run (the parser's tree, the schema validator, merge
 * patches, the MMDS renderer) would overflow the stack on thousands of levels, so deep input is
 * refused before any of them sees it. 128 levels is serde_json's default recursion limit, the one
 * Firecracker itself applies.
 */
export const MAX_JSON_DEPTH = 128;

export interface DepthViolation {
  /** Character offset of the bracket that went one level too deep. */
  offset: number;
  depth: number;
}

/**
 * Scans JSON text without recursion and reports the first place where arrays and objects nest
 * deeper than `max`. Brackets inside strings do not count. Works on malformed text too (the
 * parser reports syntax errors separately), so it can run before parsing.
 */
export function findDeepNesting(text: string, max = MAX_JSON_DEPTH): DepthViolation | undefined {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth > max) return { offset: i, depth };
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      if (depth > 0) depth--;
    }
  }
  return undefined;
}

/** Depth of an already-parsed value, without recursion; stops counting past `max`. */
export function valueDepthExceeds(value: unknown, max = MAX_JSON_DEPTH): boolean {
  const stack: { v: unknown; d: number }[] = [{ v: value, d: 0 }];
  while (stack.length > 0) {
    const { v, d } = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (d + 1 > max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v as Record<string, unknown>)) {
      if (child !== null && typeof child === 'object') stack.push({ v: child, d: d + 1 });
    }
  }
  return false;
}
