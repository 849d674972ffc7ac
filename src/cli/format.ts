import * as path from 'node:path';
import { pointer, SpecIssue } from '../config/issues';
import type { Output } from './output';

type Paint = (text: string) => string;

/** The few ANSI styles fc-run's messages use; every one is the identity when colors are off. */
export interface Painter {
  red: Paint & { bold: Paint };
  yellow: Paint & { bold: Paint };
  green: Paint;
  cyan: Paint;
  bold: Paint;
  dim: Paint;
}

/** Colors only when the stream is a terminal, unless NO_COLOR / FORCE_COLOR say otherwise. */
export function painterFor(stream: Output): Painter {
  const forced = process.env.FORCE_COLOR !== undefined && process.env.FORCE_COLOR !== '0';
  const on = process.env.NO_COLOR !== undefined ? false : forced || stream.isTTY === true;
  const style =
    (open: number, close: number): Paint =>
    (text) =>
      on ? `\x1b[${open}m${text}\x1b[${close}m` : text;
  const bold = style(1, 22);
  const withBold = (paint: Paint) => Object.assign(paint, { bold: (text: string) => bold(paint(text)) });
  return { red: withBold(style(31, 39)), yellow: withBold(style(33, 39)), green: style(32, 39), cyan: style(36, 39), bold, dim: style(2, 22) };
}

/** A file name as the user would type it: relative when it lies under the working directory, control characters escaped (printable). */
export function displayPath(file: string): string {
  if (!path.isAbsolute(file)) return printable(file);
  const rel = path.relative(process.cwd(), file);
  return printable(rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file);
}

/**
 * Text for a terminal with the control characters a spec, a file name or a value can carry
 * (escape sequences that retitle or clear a terminal, NUL, C1 controls) shown escaped, as \x1b
 * or \u0085; tabs and line breaks stay.
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (ch) => (ch < '\x80' ? `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}` : unicodeEscape(ch)));
}

/** `ch` as a \uXXXX escape (valid in JSON too). */
export function unicodeEscape(ch: string): string {
  return `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;
}

/** One issue as "file:line:col: error: /json/path: message", then an indented fix. */
export function formatIssue(issue: SpecIssue, c: Painter): string {
  const where = [issue.file ? displayPath(issue.file) : undefined, issue.line, issue.column].filter((x) => x !== undefined).join(':');
  const sev = issue.severity === 'error' ? c.red.bold('error') : c.yellow.bold('warning');
  const p = issue.path.length > 0 ? `${c.cyan(printable(pointer(issue.path)))}: ` : '';
  let out = `${c.bold(where)}: ${sev}[${issue.code}]: ${p}${printable(issue.message)}`;
  if (issue.hint) out += `\n    ${c.dim('fix:')} ${printable(issue.hint)}`;
  return out;
}

/** Issues as machine-readable records. */
export function issueJson(issue: SpecIssue): Record<string, unknown> {
  return {
    severity: issue.severity,
    code: issue.code,
    file: issue.file,
    line: issue.line,
    column: issue.column,
    path: pointer(issue.path),
    message: issue.message,
    hint: issue.hint,
  };
}

/** A plain text table with left-aligned columns. */
export function table(header: string[], rows: string[][], c: Painter, indent = '  '): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => indent + cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]))).join('  ');
  return [c.dim(line(header)), ...rows.map(line)].join('\n');
}

export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    u++;
  }
  if (u === 0 && n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${v} ${units[u]}`;
}
