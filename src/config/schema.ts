import * as fs from 'node:fs';
import type { ErrorObject, ValidateFunction } from 'ajv';
import { AJV_OPTIONS, CUSTOM_KEYWORDS, STANDALONE_DEFINITIONS, withoutAnnotations } from './schema-options';
import { IssueList } from './issues';
import { closestMatch } from './suggest';


type Entry = 'spec' | (typeof STANDALONE_DEFINITIONS)[number];

interface Compiled {
  /** Validator for the whole spec ("spec") or one of the STANDALONE_DEFINITIONS. */
  validator(name: Entry): ValidateFunction;
}
let compiled: Compiled | undefined;
let schemaJson: Record<string, unknown> | undefined;

/** The spec schema (schemas/vm.schema.json), read once, when first needed. */
export function loadSchema(): Record<string, unknown> {
  // The package root is looked up only here: a start that validates with the precompiled
  // validator and finds nothing wrong never needs the schema file.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { SCHEMA_PATH } = require('../package-root') as typeof import('../package-root');
  return (schemaJson ??= JSON.parse(fs.readFileSync(SCHEMA_PATH, 'utf8')) as Record<string, unknown>);
}

/**
 * The validators `npm run build` precompiles next to this module in dist/ (and the bundler then
 * inlines); absent when the sources run under ts-jest, where the schema is compiled instead.
 */
function precompiled(): Record<string, ValidateFunction> | undefined {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('./schema-validator.generated.js') as Record<string, ValidateFunction>;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' && String((err as Error).message).includes('schema-validator.generated')) return undefined;
    throw err;
  }
}

function compile(): Compiled {
  if (compiled) return compiled;
  const validators = precompiled();
  if (validators) {
    compiled = { validator: (name) => validators[name] };
    return compiled;
  }
  const schema = loadSchema();
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const Ajv = (require('ajv') as typeof import('ajv')).default;
  const ajv = new Ajv({ ...AJV_OPTIONS });
  for (const k of CUSTOM_KEYWORDS) ajv.addKeyword(k);
  ajv.addSchema(schema);
  const id = String(schema.$id);
  compiled = { validator: (name) => ajv.getSchema(name === 'spec' ? id : `${id}#/definitions/${name}`) as ValidateFunction };
  return compiled;
}

/**
 * Validates a parsed value against the spec schema (or one of its definitions, e.g. "CpuConfig"
 * for a CPU template file) and turns ajv's errors into issues that say what is wrong in words a
 * user can act on.
 */
export function checkSchema(value: unknown, issues: IssueList, definition?: (typeof STANDALONE_DEFINITIONS)[number], nulled: Set<string> = new Set(), withNulls?: unknown): void {
  const validate = compile().validator(definition ?? 'spec');
  const ignored: (string | number)[][] = [];
  if (!validate(value)) for (const err of pruneAlternatives(validate.errors ?? [], value)) describe(err, issues, nulled, ignored);
  // `value` is without the members given as null (`nulled`: absent, as serde reads an optional
  // field's null). A key serde does not know is refused whatever its value, null included
  // (deny_unknown_fields): those are looked for in the value as written.
  if (withNulls !== undefined && nulled.size > 0 && !validate(withNulls)) {
    for (const err of pruneAlternatives(validate.errors ?? [], withNulls)) {
      if (err.keyword !== 'additionalProperties') continue;
      const key = JSON.stringify([...segments(err.instancePath), (err.params as { additionalProperty: string }).additionalProperty]);
      // Where Firecracker ignores unknown keys this is a warning; the key is absent already.
      if (nulled.has(key)) describe(err, issues, nulled, []);
    }
  }
  // What Firecracker ignores goes no further than the warning: the plan never sees it.
  for (const at of ignored) {
    const owner = valueAt(value, at.slice(0, -1));
    if (owner !== null && typeof owner === 'object') delete (owner as Record<string | number, unknown>)[at[at.length - 1]];
  }
}

/** Issue codes whose path names a key (located at the key, not at its value). */
export const KEY_ISSUE_CODES: ReadonlySet<string> = new Set(['unknown-property', 'unknown-section', 'unknown-property-ignored']);

/** The schema keyword marking an object whose unknown properties Firecracker ignores. */
const IGNORE_UNKNOWN = 'x-ignore-unknown-properties';

function segments(instancePath: string): (string | number)[] {
  if (instancePath === '') return [];
  return instancePath
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((s) => (/^(0|[1-9]\d*)$/.test(s) ? Number(s) : s));
}

function valueAt(root: unknown, path: (string | number)[]): unknown {
  let v: unknown = root;
  for (const p of path) v = (v as Record<string | number, unknown> | undefined)?.[p];
  return v;
}

function jsonType(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function typeMatches(schemaType: unknown, v: unknown): boolean {
  if (schemaType === undefined) return true;
  const types = Array.isArray(schemaType) ? schemaType : [schemaType];
  const actual = jsonType(v);
  return types.some((t) => t === actual || (t === 'number' && actual === 'integer'));
}

/**
 * For oneOf/anyOf, ajv reports every branch's failures. Keep only the branch the user evidently
 * meant (the first whose type matches the value); if none matches, keep one type error.
 */
function pruneAlternatives(errors: ErrorObject[], root: unknown): ErrorObject[] {
  const definitions = (loadSchema().definitions ?? {}) as Record<string, Record<string, unknown>>;
  const deref = (b: Record<string, unknown>) =>
    typeof b.$ref === 'string' ? (definitions[b.$ref.replace('#/definitions/', '')] ?? b) : b;
  // Composites by the instance path they test: an error can belong only to a composite at its own
  // path or an ancestor's, so each error is checked against those few, never against all of them
  // (a spec with thousands of failing items would otherwise cost composites x errors).
  const composites = new Map<string, { c: ErrorObject; branches: Record<string, unknown>[]; chosen: number }[]>();
  for (const c of errors) {
    if (c.keyword !== 'oneOf' && c.keyword !== 'anyOf') continue;
    const branches = (c.schema as Record<string, unknown>[]) ?? [];
    const data = valueAt(root, segments(c.instancePath));
    const chosen = branches.findIndex((b) => typeMatches(deref(b).type, data));
    const list = composites.get(c.instancePath) ?? [];
    list.push({ c, branches, chosen });
    composites.set(c.instancePath, list);
  }
  if (composites.size === 0) return errors;
  // An error belongs to branch k when ajv reports it under the branch's schema path, or, for a
  // branch that is a $ref (whose errors ajv reports relative to the definition), when the schema
  // object that failed lies inside the referenced definition. The schema path is checked first:
  // small schemas such as { "type": "null" } also occur, by value, inside definitions.
  const branchOf = (c: ErrorObject, branches: Record<string, unknown>[], e: ErrorObject): number => {
    const direct = branches.findIndex((_, k) => e.schemaPath.startsWith(`${c.schemaPath}/${k}/`));
    if (direct >= 0) return direct;
    return branches.findIndex((b) => typeof b.$ref === 'string' && subschemas(deref(b)).has(schemaKey(e.parentSchema)));
  };
  return errors.filter((e) => {
    const parts = e.instancePath.split('/');
    for (let n = 1; n <= parts.length; n++) {
      for (const { c, branches, chosen } of composites.get(parts.slice(0, n).join('/')) ?? []) {
        if (e === c) {
          if (chosen >= 0) return false;
          continue;
        }
        const k = branchOf(c, branches, e);
        if (k >= 0 && k !== chosen) return false;
      }
    }
    return true;
  });
}

const subschemaCache = new WeakMap<object, Set<string>>();
const schemaKeyCache = new WeakMap<object, string>();

/** A schema object serialized without annotations, once per object (ajv shares them between errors). */
function schemaKey(schema: unknown): string {
  if (schema === null || typeof schema !== 'object') return JSON.stringify(schema);
  let key = schemaKeyCache.get(schema);
  if (key === undefined) schemaKeyCache.set(schema, (key = JSON.stringify(withoutAnnotations(schema))));
  return key;
}

/**
 * Every object nested in a schema, serialized, to test whether ajv's `parentSchema` lies inside
 * it. By value, not identity: the precompiled validator carries its own copies of the schema.
 */
function subschemas(schema: object): Set<string> {
  let set = subschemaCache.get(schema);
  if (set) return set;
  const found = new Set<string>();
  const walk = (v: unknown) => {
    if (v === null || typeof v !== 'object') return;
    found.add(JSON.stringify(v));
    for (const child of Object.values(v)) walk(child);
  };
  // Without annotations, as the precompiled validator's schema objects are (and ajv's parentSchema).
  walk(withoutAnnotations(schema));
  subschemaCache.set(schema, (set = found));
  return set;
}

function describe(err: ErrorObject, issues: IssueList, nulled: Set<string>, ignored: (string | number)[][]): void {
  const at = segments(err.instancePath);
  const data = err.data;
  const parent = (err.parentSchema ?? {}) as Record<string, unknown>;
  switch (err.keyword) {
    case 'required': {
      const name = (err.params as { missingProperty: string }).missingProperty;
      const prop = ((parent.properties ?? {}) as Record<string, Record<string, unknown>>)[name] ?? {};
      const example = Array.isArray(prop.examples) ? prop.examples[0] : undefined;
      if (nulled.has(JSON.stringify([...at, name]))) {
        issues.error('required', [...at, name], `required property "${name}" is null`, `give "${name}" a value`);
        return;
      }
      issues.error(
        'required',
        [...at, name],
        `required property "${name}" is missing${at.length ? '' : ' at the top level'}`,
        `add "${name}"${example !== undefined ? `, for example "${name}": ${JSON.stringify(example)}` : ''}`,
      );
      return;
    }
    case 'additionalProperties': {
      const name = (err.params as { additionalProperty: string }).additionalProperty;
      const known = Object.keys((parent.properties ?? {}) as object);
      const guess = closestMatch(name, known);
      const hint = guess ? `did you mean "${guess}"?` : `known properties here: ${known.join(', ')}`;
      if (parent[IGNORE_UNKNOWN] === true) {
        // Where Firecracker's serde has no deny_unknown_fields (token buckets, metrics, CPUID and
        // MSR modifiers), its configs may carry extra keys and still run: so do they here.
        issues.warning('unknown-property-ignored', [...at, name], `unknown property "${name}" is ignored (as Firecracker ignores it)`, guess ? `did you mean "${guess}"?` : `remove it; known properties here: ${known.join(', ')}`);
        ignored.push([...at, name]);
      } else if (at.length === 0) {
        // Firecracker ignores unknown top-level sections, so a typo there ("machine_config")
        // silently boots a VM with defaults; fc-run refuses it instead.
        issues.error('unknown-section', [name], `unknown top-level section "${name}"`, hint);
      } else {
        issues.error('unknown-property', [...at, name], `unknown property "${name}"`, hint);
      }
      return;
    }
    case 'type': {
      const want = withoutNull(String((err.params as { type: string | string[] }).type).split(',')).join(' or ');
      issues.error('type', at, `must be ${article(want)} ${want}, got ${describeValue(data)}`);
      return;
    }
    case 'oneOf':
    case 'anyOf': {
      const definitions = (loadSchema().definitions ?? {}) as Record<string, Record<string, unknown>>;
      const types = ((err.schema as Record<string, unknown>[]) ?? []).map((b) =>
        String(b.type ?? (typeof b.$ref === 'string' ? definitions[b.$ref.replace('#/definitions/', '')]?.type : undefined) ?? 'value'),
      );
      const wanted = withoutNull([...new Set(types.flatMap((t) => t.split(',')))]);
      issues.error('type', at, `must be ${wanted.map((t) => `${article(t)} ${t}`).join(' or ')}, got ${describeValue(data)}`);
      return;
    }
    case 'enum': {
      const allowed = withoutNull((err.params as { allowedValues: unknown[] }).allowedValues);
      const guess = typeof data === 'string' ? closestMatch(data, allowed.map(String)) : undefined;
      issues.error(
        'enum',
        at,
        `must be one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}, got ${describeValue(data)}`,
        guess ? `did you mean "${guess}"?` : undefined,
      );
      return;
    }
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum': {
      const p = err.params as { comparison: string; limit: number };
      issues.error('range', at, `must be ${p.comparison} ${p.limit}, got ${describeValue(data)}`);
      return;
    }
    case 'pattern': {
      const hint = parent['x-pattern-hint'];
      const expected = typeof hint === 'string' ? hint : `a string matching ${(err.params as { pattern: string }).pattern}`;
      issues.error('format', at, `must be ${expected}, got ${describeValue(data)}`);
      return;
    }
    case 'minLength': {
      const limit = (err.params as { limit: number }).limit;
      issues.error('length', at, limit === 1 ? 'must not be empty' : `must be at least ${limit} characters long`);
      return;
    }
    case 'minItems': {
      const limit = (err.params as { limit: number }).limit;
      issues.error('length', at, `must list at least ${limit} item${limit === 1 ? '' : 's'}`);
      return;
    }
    default:
      issues.error(err.keyword, at, err.message ?? `fails schema keyword ${err.keyword}`);
  }
}

/**
 * The schema admits null for optional fields (for editors, as Firecracker does), but nulls are
 * removed before validation, so "or null" would only mislead in an error message.
 */
function withoutNull<T>(alternatives: T[]): T[] {
  return alternatives.filter((a) => a !== null && a !== 'null');
}

function article(word: string): string {
  return /^[aeiou]/.test(word) ? 'an' : 'a';
}

export function describeValue(v: unknown): string {
  const t = jsonType(v);
  if (t === 'object') return 'an object';
  if (t === 'array') return 'an array';
  if (t === 'null') return 'null';
  const text = JSON.stringify(v);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
