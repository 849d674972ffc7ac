import { EXIT_FAILURE, FcRunError } from '../errors';
import { closestMatch } from '../config/suggest';

/**
 * fc-run's own command-line parser. Strict by design: an unknown option, a missing or malformed
 * value, an option given twice, or a stray argument is a usage error (exit 1) that names the
 * option, before any file is read. General-purpose parsers guess instead (a mistyped option
 * swallows the next argument, "abc" becomes NaN, "--a.b" builds objects), and a launcher whose
 * flags are copied from scripts cannot afford guesses.
 *
 * Accepted forms: `--name value`, `--name=value`, `--flag`, `-x` for declared short aliases, and
 * `--` to end options. A value that looks like an option (`--log-path --level`) is taken as a
 * missing value; write `--log-path=--level` to mean it.
 */

export class UsageError extends FcRunError {
  constructor(
    message: string,
    /** The command whose help to point at ('' for the top level). */
    readonly command = '',
  ) {
    super('usage', message, EXIT_FAILURE);
  }
}

interface OptionBase {
  name: string;
  describe: string;
  /** One-letter alias, without the dash. */
  short?: string;
  hidden?: boolean;
  /** Shown in help, e.g. "PATH". */
  valueName?: string;
}

export type OptionSpec =
  | (OptionBase & { kind: 'flag' })
  | (OptionBase & { kind: 'string'; repeatable?: boolean; choices?: readonly string[]; caseInsensitive?: boolean; aliases?: Readonly<Record<string, string>>; check?: (v: string) => string | undefined })
  | (OptionBase & { kind: 'integer'; min: number; max: number })
  /** Accepted only to refuse it by name with what to use instead. */
  | (OptionBase & { kind: 'refused'; takesValue: boolean; why: string });

export interface CommandSpec {
  name: string;
  summary: string;
  usage: string;
  positionals: { name: string; describe: string; variadic?: boolean; optional?: boolean }[];
  options: OptionSpec[];
  examples: [string, string][];
  /** Text after the options in --help. */
  notes?: string;
  /** Arguments after `--` are the command's to pass on (ParsedArgs.rest), not positionals. */
  passThrough?: boolean;
}

export type OptionValue = string | number | boolean | string[];

export interface ParsedArgs {
  /** Values by option name; flags are true when given; absent options are absent. */
  options: Record<string, OptionValue>;
  positionals: string[];
  /** Arguments after a `--` that the command passes on (only when `passThrough` is set). */
  rest: string[];
}

/** The characters an option value may not contain: control characters reach C strings and logs. */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

function describeValue(v: string): string {
  return JSON.stringify(v.length > 40 ? `${v.slice(0, 37)}...` : v);
}

/**
 * Parses `argv` (the arguments after the command name) against `spec`. With `passThrough`, the
 * arguments after `--` are returned in `rest` instead of being taken as positionals.
 */
export function parseArgs(argv: readonly string[], spec: CommandSpec, opts: { passThrough?: boolean } = {}): ParsedArgs {
  const byName = new Map<string, OptionSpec>();
  for (const o of spec.options) {
    byName.set(o.name, o);
    if (o.short) byName.set(o.short, o);
  }
  const fail = (message: string): never => {
    throw new UsageError(message, spec.name);
  };
  const options: Record<string, OptionValue> = {};
  const positionals: string[] = [];
  let rest: string[] = [];

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      if (opts.passThrough) rest = argv.slice(i + 1);
      else positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      positionals.push(arg);
      continue;
    }
    const long = arg.startsWith('--');
    const body = long ? arg.slice(2) : arg.slice(1);
    const eq = long ? body.indexOf('=') : -1;
    const name = eq >= 0 ? body.slice(0, eq) : body;
    const inline = eq >= 0 ? body.slice(eq + 1) : undefined;
    const shown = long ? `--${name}` : `-${name}`;
    const option = long ? byName.get(name) : name.length === 1 ? byName.get(name) : undefined;
    if (!option || (long && option.name !== name)) {
      const known = spec.options.filter((o) => !o.hidden).map((o) => o.name);
      const guess = closestMatch(name.replace(/^-+/, ''), known);
      fail(`unknown option ${shown}${guess ? ` (did you mean --${guess}?)` : ''}`);
    }
    const opt = option!;
    const takesValue = opt.kind === 'refused' ? opt.takesValue : opt.kind !== 'flag';
    let value: string | undefined;
    if (takesValue) {
      if (inline !== undefined) value = inline;
      else {
        const next = argv[i + 1];
        if (next === undefined || (next.startsWith('-') && next !== '-' && next.length > 1 && !/^-\d/.test(next))) {
          fail(`option --${opt.name} needs a value${opt.valueName ? ` (${opt.valueName})` : ''}`);
        }
        value = next;
        i++;
      }
    } else if (inline !== undefined) {
      fail(`option --${opt.name} takes no value (got ${describeValue(inline)})`);
    }
    if (opt.kind === 'refused') fail(`option --${opt.name} is not supported by fc-run: ${opt.why}`);
    if (opt.name in options && !(opt.kind === 'string' && opt.repeatable)) fail(`option --${opt.name} is given more than once`);
    const converted = convert(opt, value, fail);
    if (opt.kind === 'string' && opt.repeatable) ((options[opt.name] ??= []) as string[]).push(converted as string);
    else options[opt.name] = converted;
  }

  const required = spec.positionals.filter((p) => !p.optional);
  const variadic = spec.positionals.some((p) => p.variadic);
  if (positionals.length < required.length) {
    const missing = required[positionals.length];
    fail(`missing ${missing.variadic ? 'at least one ' : ''}<${missing.name}> argument`);
  }
  if (!variadic && positionals.length > spec.positionals.length) {
    const extra = positionals[spec.positionals.length];
    fail(`unexpected argument ${describeValue(extra)}${spec.positionals.length ? ` (${spec.name} takes ${spec.positionals.map((p) => `<${p.name}>`).join(' ')})` : ''}`);
  }
  for (const p of positionals) {
    if (p === '') fail('an empty argument is not a file name');
    if (CONTROL.test(p)) fail(`argument ${describeValue(p)} contains a control character`);
  }
  return { options, positionals, rest };
}

function convert(opt: OptionSpec, value: string | undefined, fail: (m: string) => never): OptionValue {
  const name = `--${opt.name}`;
  switch (opt.kind) {
    case 'flag':
      return true;
    case 'integer': {
      const v = value!;
      if (!/^(0|[1-9][0-9]*)$/.test(v)) fail(`option ${name} must be a whole number, got ${describeValue(v)}`);
      const n = Number(v);
      if (!Number.isSafeInteger(n) || n < opt.min || n > opt.max) fail(`option ${name} must be between ${opt.min} and ${opt.max}, got ${v}`);
      return n;
    }
    case 'string': {
      const v = value!;
      if (v === '') fail(`option ${name} needs a non-empty value`);
      if (CONTROL.test(v)) fail(`option ${name} contains a control character`);
      if (opt.choices) {
        // An alias (another spelling of a choice, as lower case when caseInsensitive) stands for it.
        const key = opt.caseInsensitive ? v.toLowerCase() : v;
        const alias = opt.aliases !== undefined && Object.hasOwn(opt.aliases, key) ? opt.aliases[key] : undefined;
        const found = alias ?? opt.choices.find((c) => (opt.caseInsensitive ? c.toLowerCase() === v.toLowerCase() : c === v));
        if (found === undefined) {
          const guess = closestMatch(v, [...opt.choices]);
          fail(`option ${name} must be one of ${opt.choices.join(', ')}, got ${describeValue(v)}${guess ? ` (did you mean ${guess}?)` : ''}`);
        }
        return found!;
      }
      const problem = opt.check?.(v);
      if (problem) fail(`option ${name} ${problem}`);
      return v;
    }
    default:
      return fail(`option ${name} is not supported`);
  }
}

/** The --help text of one command. */
export function helpText(spec: CommandSpec, width = 100): string {
  const lines: string[] = [`Usage: ${spec.usage}`, '', spec.summary];
  if (spec.positionals.length > 0) {
    lines.push('', 'Arguments:');
    for (const p of spec.positionals) lines.push(`  ${`<${p.name}>${p.variadic ? '...' : ''}`.padEnd(28)} ${p.describe}`);
  }
  const visible = spec.options.filter((o) => !o.hidden);
  if (visible.length > 0) {
    lines.push('', 'Options:');
    for (const o of visible) {
      const takes = o.kind === 'refused' ? o.takesValue : o.kind !== 'flag';
      const head = `${o.short ? `-${o.short}, ` : ''}--${o.name}${takes ? ` ${o.valueName ?? 'VALUE'}` : ''}`;
      const extra = o.kind === 'integer' ? ` (${o.min}-${o.max})` : o.kind === 'string' && o.choices ? ` (${o.choices.join(', ')})` : '';
      lines.push(...wrap(`  ${head.padEnd(28)} `, `${o.describe}${extra}`, width));
    }
  }
  if (spec.examples.length > 0) {
    lines.push('', 'Examples:');
    for (const [cmd, what] of spec.examples) lines.push(`  ${cmd}`, `      ${what}`);
  }
  if (spec.notes) lines.push('', spec.notes);
  return lines.join('\n');
}

function wrap(head: string, text: string, width: number): string[] {
  const room = Math.max(30, width - head.length);
  const out: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + 1 + word.length > room) {
      out.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  out.push(line);
  return out.map((l, i) => (i === 0 ? head : ' '.repeat(head.length)) + l);
}
