import { findNodeAtLocation, Node, parseTree, ParseError } from 'jsonc-parser';
import { SpecIssue } from './issues';
import { findDeepNesting, MAX_JSON_DEPTH } from './json-depth';

export interface ParseOptions {
  /**
   * Numbers must be written as whole numbers (`2`, not `2.0` or `2e0`): every number in a spec
   * or a CPU template is an integer field, and serde (Firecracker) refuses the other notations.
   * Top-level keys listed in `freeForm` hold data of any shape (the MMDS contents) and are exempt.
   */
  wholeNumbers?: boolean;
  freeForm?: readonly string[];
}

/**
 * A JSON document together with its source text, so any path into the value can be mapped back
 * to a line and column for error messages.
 */
export class SpecSource {
  private readonly lineStarts: number[];

  private constructor(
    readonly file: string,
    readonly text: string,
    readonly value: unknown,
    private readonly tree: Node | undefined,
  ) {
    this.lineStarts = [0];
    for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) this.lineStarts.push(i + 1);
  }

  /**
   * Parses strict JSON (no comments, no trailing commas, as Firecracker requires). Returns the
   * source, or the issues that make the text unusable: syntax errors, duplicate keys (which
   * JSON.parse would silently resolve to the last one) and integers too large to hold exactly.
   */
  static parse(file: string, rawText: string, opts: ParseOptions = {}): { source?: SpecSource; issues: SpecIssue[] } {
    // A UTF-8 BOM is invisible in editors; accept it rather than fail at "line 1, column 1".
    const text = rawText.charCodeAt(0) === 0xfeff ? rawText.slice(1) : rawText;
    if (text.trim() === '') {
      return { issues: [{ severity: 'error', code: 'json-syntax', path: [], file, line: 1, column: 1, message: 'the file is empty', hint: 'write a JSON object describing the microVM' }] };
    }
    const probe = new SpecSource(file, text, undefined, undefined);
    // Before any recursive parser or walker sees it: thousands of levels would overflow the stack.
    const deep = findDeepNesting(text);
    if (deep) {
      return {
        issues: [
          {
            severity: 'error',
            code: 'json-too-deep',
            path: [],
            file,
            ...probe.position(deep.offset),
            message: `JSON nests deeper than ${MAX_JSON_DEPTH} levels of arrays and objects`,
            hint: `flatten the structure: at most ${MAX_JSON_DEPTH} levels are accepted`,
          },
        ],
      };
    }
    const errors: ParseError[] = [];
    const tree = parseTree(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
    // After the first syntax error the parser's recovery produces follow-on noise; report the first.
    const issues: SpecIssue[] = errors.slice(0, 1).map((e) => ({
      severity: 'error',
      code: 'json-syntax',
      path: [],
      file,
      ...probe.position(e.offset),
      message: `malformed JSON: ${describeParseError(e.error)}`,
      hint: 'fix the JSON syntax at this position (a spec is strict JSON: no comments, no trailing commas)',
    }));
    if (issues.length > 0 || tree === undefined) return { issues };
    checkTree(tree, text, [], opts, (issue) => issues.push({ ...issue, file, ...probe.position(issue.offset) }));
    if (issues.length > 0) return { issues };
    // JSON.parse builds the value: it creates "__proto__" as an ordinary own key, never touching prototypes.
    const value: unknown = JSON.parse(text);
    return { source: new SpecSource(file, text, value, tree), issues };
  }

  /** 1-based line and column of a character offset. */
  position(offset: number): { line: number; column: number } {
    let lo = 0;
    let hi = this.lineStarts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.lineStarts[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    return { line: lo + 1, column: offset - this.lineStarts[lo] + 1 };
  }

  /**
   * Where a path points in the text. For a property, `at: 'key'` gives the position of its key
   * (best for "unknown property"); `at: 'value'` its value. A path that does not exist (a missing
   * required property) maps to the nearest existing ancestor.
   */
  locate(path: readonly (string | number)[], at: 'key' | 'value' = 'value'): { line: number; column: number } {
    if (!this.tree) return { line: 1, column: 1 };
    for (let n = path.length; n >= 0; n--) {
      const node = findNodeAtLocation(this.tree, path.slice(0, n) as (string | number)[]);
      if (!node) continue;
      const keyNode = node.parent?.type === 'property' ? node.parent.children?.[0] : undefined;
      if (keyNode && (at === 'key' || n < path.length)) return this.position(keyNode.offset);
      return this.position(node.offset);
    }
    return { line: 1, column: 1 };
  }
}

type TreeIssue = Omit<SpecIssue, 'file' | 'line' | 'column'> & { offset: number };

function checkTree(node: Node, text: string, path: (string | number)[], opts: ParseOptions, report: (i: TreeIssue) => void): void {
  if (node.type === 'object') {
    const seen = new Map<string, Node>();
    for (const prop of node.children ?? []) {
      const [keyNode, valueNode] = prop.children ?? [];
      if (!keyNode) continue;
      const key = String(keyNode.value);
      const first = seen.get(key);
      if (first) {
        report({
          severity: 'error',
          code: 'duplicate-key',
          path: [...path, key],
          offset: keyNode.offset,
          message: `key "${key}" appears twice in the same object`,
          hint: 'keep one of them: JSON parsers disagree on which copy wins',
        });
      } else {
        seen.set(key, keyNode);
      }
      if (valueNode) checkTree(valueNode, text, [...path, key], opts, report);
    }
  } else if (node.type === 'array') {
    (node.children ?? []).forEach((child, i) => checkTree(child, text, [...path, i], opts, report));
  } else if (node.type === 'number') {
    const raw = text.slice(node.offset, node.offset + node.length);
    const freeForm = path.length > 0 && typeof path[0] === 'string' && (opts.freeForm ?? []).includes(path[0]);
    if (opts.wholeNumbers && !freeForm && !/^-?\d+$/.test(raw)) {
      report({
        severity: 'error',
        code: 'not-whole-number',
        path,
        offset: node.offset,
        message: `${raw} is not written as a whole number`,
        hint: Number.isSafeInteger(Number(raw)) ? `write ${Number(raw)}` : 'every number here is an integer: write it with digits only',
      });
    } else if (!Number.isFinite(Number(raw))) {
      report({
        severity: 'error',
        code: 'number-too-large',
        path,
        offset: node.offset,
        message: `${raw.length > 40 ? `${raw.slice(0, 37)}...` : raw} is beyond the range of a double; it would read as null`,
        hint: 'use a smaller number, or a string',
      });
    } else if (/^-?\d+$/.test(raw) && !Number.isSafeInteger(Number(raw))) {
      report({
        severity: 'error',
        code: 'integer-too-large',
        path,
        offset: node.offset,
        message: `${raw} is larger than fc-run can represent exactly (2^53 - 1 = ${Number.MAX_SAFE_INTEGER})`,
        hint: 'use a smaller value',
      });
    }
  }
}

/**
 * A jsonc-parser ParseErrorCode (a const enum, which isolatedModules cannot read: its values, 1 to
 * 16) in words.
 */
function describeParseError(code: number): string {
  const words = [
    'unexpected character',
    'invalid number',
    'expected a property name in double quotes',
    'expected a value',
    "expected ':'",
    "expected ','",
    "expected '}'",
    "expected ']'",
    'unexpected content after the end of the JSON value',
    'comments are not allowed in JSON',
    'unterminated comment',
    'unterminated string',
    'unterminated number',
    'invalid unicode escape',
    'invalid escape character in string',
    'invalid character in string (control characters must be escaped)',
  ];
  return words[code - 1] ?? `JSON parse error ${code}`;
}
