import { createScanner, SyntaxKind } from 'jsonc-parser';

// jsonc-parser's SyntaxKind is a const enum, which isolatedModules cannot read: its values.
const OPEN_BRACE = 1 as SyntaxKind;
const CLOSE_BRACE = 2 as SyntaxKind;
const OPEN_BRACKET = 3 as SyntaxKind;
const CLOSE_BRACKET = 4 as SyntaxKind;
const EOF = 17 as SyntaxKind;

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
 * deeper than `max`. It reads the text with the parser's own tokenizer, so what counts as a
 * string or a comment here is exactly what the parser will see: a hand-written scan disagreed
 * with it (a raw line break ends a string for jsonc-parser, a block comment may hold a quote) and
 * let the parser recurse through brackets the scan had taken for string content. Works on
 * malformed text too (the parser reports syntax errors separately), so it can run before parsing.
 */
export function findDeepNesting(text: string, max = MAX_JSON_DEPTH): DepthViolation | undefined {
  // Nesting deeper than `max` needs more than `max` opening brackets in the text (in strings or
  // not): counting the characters is enough for nearly every input, and far cheaper than a scan.
  if (countUpTo(text, '{', max) + countUpTo(text, '[', max) <= max) return undefined;
  const scanner = createScanner(text, true);
  let depth = 0;
  for (let token = scanner.scan(); token !== EOF; token = scanner.scan()) {
    if (token === OPEN_BRACE || token === OPEN_BRACKET) {
      if (++depth > max) return { offset: scanner.getTokenOffset(), depth };
    } else if (token === CLOSE_BRACE || token === CLOSE_BRACKET) {
      if (depth > 0) depth--;
    }
  }
  return undefined;
}

/** How often `ch` occurs in `text`, counted up to `limit + 1`. */
function countUpTo(text: string, ch: string, limit: number): number {
  let n = 0;
  for (let i = text.indexOf(ch); i >= 0 && n <= limit; i = text.indexOf(ch, i + 1)) n++;
  return n;
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
