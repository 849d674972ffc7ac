import { loadSchema } from '../../src/config/schema';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { withoutAnnotations } from '../../src/config/schema-options';

type Schema = Record<string, any>;

/** Every named property in the schema, with its JSON path, descending through definitions. */
function properties(schema: Schema): [string, Schema][] {
  const out: [string, Schema][] = [];
  const walk = (node: Schema, at: string) => {
    if (!node || typeof node !== 'object') return;
    for (const [name, prop] of Object.entries<Schema>(node.properties ?? {})) {
      out.push([`${at}.${name}`, prop]);
      walk(prop, `${at}.${name}`);
    }
    if (node.items) walk(node.items, `${at}[]`);
    for (const branch of [...(node.oneOf ?? []), ...(node.anyOf ?? [])]) walk(branch, at);
  };
  walk(schema, '$');
  for (const [name, def] of Object.entries<Schema>(schema.definitions)) walk(def, `#${name}`);
  return out;
}

const schema = loadSchema() as Schema;
const definition = (ref: string): Schema => schema.definitions[ref.replace('#/definitions/', '')];
/** A property with its definition merged in, seen through a nullable wrapper (anyOf [$ref, null]). */
const resolve = (p: Schema): Schema => {
  const ref = p.$ref ?? (p.anyOf ?? []).find((b: Schema) => b.$ref)?.$ref;
  return ref ? { ...definition(ref), ...p } : p;
};
/** The property's type without the null alternative (nulls are "absent" and never reach fc-run's code). */
const baseType = (p: Schema): unknown => (Array.isArray(p.type) ? p.type.filter((t: string) => t !== 'null').join(',') : p.type);
const nullable = (p: Schema): boolean =>
  (Array.isArray(p.type) && p.type.includes('null')) || [...(p.anyOf ?? []), ...(p.oneOf ?? [])].some((b: Schema) => b.type === 'null');

test('every property is documented for editors (its own description or its definition\'s)', () => {
  const missing = properties(schema).filter(([, p]) => !resolve(p).description).map(([path]) => path);
  expect(missing).toEqual([]);
});

test('Firecracker\'s defaults are declared where they exist', () => {
  const defaults = Object.fromEntries(properties(schema).filter(([, p]) => 'default' in p).map(([path, p]) => [path, p.default]));
  expect(defaults).toMatchObject({
    '#MachineConfig.smt': false,
    '#MachineConfig.cpu_template': 'None',
    '#MachineConfig.huge_pages': 'None',
    '#Drive.cache_type': 'Unsafe',
    '#Drive.io_engine': 'Sync',
    '#MmdsConfig.version': 'V1',
    '#MmdsConfig.ipv4_address': '169.254.169.254',
    '#Logger.level': 'Info',
  });
});

test('free-form values have examples, so completion offers a starting point', () => {
  const freeForm = properties(schema).filter(([, p]) => {
    const r = resolve(p);
    return (baseType(r) === 'string' || baseType(r) === 'integer') && !r.enum && !('default' in r) && !r.pattern;
  });
  const missing = freeForm
    .filter(([path, p]) => !resolve(p).examples && !/vsock_id|reg_modifiers|vcpu_features|module|Balloon|Pmem|MemoryHotplug/.test(path))
    .map(([path]) => path);
  expect(missing).toEqual([]);
});

test('sections accepted only for compatibility say so in their description', () => {
  for (const name of ['Balloon', 'Pmem', 'MemoryHotplug']) expect(schema.definitions[name].description).toMatch(/not support/);
});

test('null is admitted exactly where it means "absent": every optional property outside CPU templates', () => {
  // Firecracker's configs write null for absent optional fields ("initrd_path": null, "vsock": null)
  // and fc-run removes those members before validating, so editors must not flag them. A required
  // property set to null is an error; CPU templates refuse null (as Firecracker does) because a
  // template file is validated as written; "mmds" is free-form data, where null is a value.
  const cpuTemplate = /^#(CpuConfig|CpuidLeafModifier|MsrModifier)\b/;
  const wrong: string[] = [];
  const walk = (node: Schema, at: string) => {
    for (const [name, prop] of Object.entries<Schema>(node.properties ?? {})) {
      const optional = !(node.required ?? []).includes(name);
      const expected = optional && !cpuTemplate.test(at) && `${at}.${name}` !== '$.mmds';
      if (nullable(prop) !== expected) wrong.push(`${at}.${name} ${expected ? 'should' : 'should not'} admit null`);
      if (Array.isArray(prop.enum) && nullable(prop) !== prop.enum.includes(null)) wrong.push(`${at}.${name}: enum and type disagree on null`);
    }
  };
  walk(schema, '$');
  for (const [name, def] of Object.entries<Schema>(schema.definitions)) walk(def, `#${name}`);
  expect(wrong).toEqual([]);
});

describe('the schema the precompiled validator embeds', () => {
  test('drops annotations only: a property named like one, and data that holds one, stay', () => {
    const schema = {
      title: 'T',
      description: 'd',
      type: 'object',
      properties: { description: { type: 'string', description: 'x', default: 'a' }, title: { $ref: '#/definitions/D' } },
      definitions: { D: { enum: [{ description: 'kept' }], examples: [{ title: 'kept' }], $comment: 'c', 'x-pattern-hint': 'h' } },
    };
    expect(withoutAnnotations(schema)).toEqual({
      type: 'object',
      properties: { description: { type: 'string' }, title: { $ref: '#/definitions/D' } },
      definitions: { D: { enum: [{ description: 'kept' }], examples: [{ title: 'kept' }], 'x-pattern-hint': 'h' } },
    });
  });

  test('the built validator carries no description of the schema', () => {
    const generated = fs.readFileSync(path.join(__dirname, '..', '..', 'dist', 'config', 'schema-validator.generated.js'), 'utf8');
    // Keys quoted or not (the generated code is minified).
    expect(generated).not.toMatch(/[{,]"?description"?:/);
    expect(generated).toContain('"x-pattern-hint":');
  });
});
