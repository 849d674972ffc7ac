import { loadSchema } from '../../src/config/schema';

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
    for (const branch of node.oneOf ?? []) walk(branch, at);
  };
  walk(schema, '$');
  for (const [name, def] of Object.entries<Schema>(schema.definitions)) walk(def, `#${name}`);
  return out;
}

const schema = loadSchema() as Schema;
const resolve = (p: Schema): Schema => (p.$ref ? { ...schema.definitions[p.$ref.replace('#/definitions/', '')], ...p } : p);

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
    return (r.type === 'string' || r.type === 'integer') && !r.enum && !('default' in r) && !r.pattern;
  });
  const missing = freeForm
    .filter(([path, p]) => !resolve(p).examples && !/vsock_id|reg_modifiers|vcpu_features|module|Balloon|Pmem|MemoryHotplug/.test(path))
    .map(([path]) => path);
  expect(missing).toEqual([]);
});

test('sections accepted only for compatibility say so in their description', () => {
  for (const name of ['Balloon', 'Pmem', 'MemoryHotplug']) expect(schema.definitions[name].description).toMatch(/not support/);
});
