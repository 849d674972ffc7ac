/**
 * The editor and the CLI agree: the JSON language service VS Code runs (vscode-json-languageservice),
 * pointed at schemas/vm.schema.json, shows no diagnostics on the specs fc-run accepts (Firecracker's
 * own configs included, with their nulls), flags what fc-run refuses, and completes and documents
 * every level of a spec.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { applyEdits, findNodeAtLocation, modify, parseTree, type JSONPath } from 'jsonc-parser';
import {
  getLanguageService,
  TextDocument,
  type CompletionItem,
  type Diagnostic,
  type Hover,
  type LanguageService,
} from 'vscode-json-languageservice';
import { SCHEMA_PATH } from '../../src/package-root';
import { loadSpecText } from '../../src/config/validate';
import { SpecInvalidError, type SpecIssue } from '../../src/config/issues';

const ROOT = path.resolve(__dirname, '..', '..');
const FIXTURES = path.join(ROOT, 'test', 'fixtures', 'firecracker');
const EXAMPLES = path.join(ROOT, 'examples');
const jsonFiles = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort().map((f) => path.join(dir, f));

/** Firecracker's configs that Firecracker itself refuses (a required field is missing). */
const REFUSED = /missing/;
const accepted = [...jsonFiles(EXAMPLES), ...jsonFiles(FIXTURES).filter((f) => !REFUSED.test(path.basename(f)))];
const EVERY_SECTION = path.join(FIXTURES, 'every_section.json');

/**
 * Set up as a user would: specs without "$schema" (Firecracker's) get the schema from a
 * fileMatch association (VS Code's "json.schemas" setting); the examples name it with "$schema",
 * resolved relative to the spec. Either way the schema is read from disk.
 */
function jsonService(): LanguageService {
  const service = getLanguageService({
    schemaRequestService: async (uri) => fs.readFileSync(fileURLToPath(uri), 'utf8'),
    workspaceContext: { resolveRelativePath: (relative, resource) => new URL(relative, resource).href },
  });
  service.configure({ validate: true, allowComments: false, schemas: [{ uri: pathToFileURL(SCHEMA_PATH).href, fileMatch: ['*.json'] }] });
  return service;
}
const service = jsonService();

function open(file: string, text = fs.readFileSync(file, 'utf8')) {
  const doc = TextDocument.create(pathToFileURL(file).href, 'json', 1, text);
  return { doc, json: service.parseJSONDocument(doc), text };
}

async function diagnosticsOf(file: string, text?: string): Promise<Diagnostic[]> {
  const { doc, json } = open(file, text);
  return service.doValidation(doc, json, { comments: 'error', trailingCommas: 'error' });
}

/** What `fc-run validate --skip-files` reports: [] when the spec is valid. */
function cliErrors(file: string, text = fs.readFileSync(file, 'utf8')): SpecIssue[] {
  try {
    loadSpecText(file, text, { skipFiles: true });
    return [];
  } catch (err) {
    if (err instanceof SpecInvalidError) return err.issues.filter((i) => i.severity === 'error');
    throw err;
  }
}

const show = (ds: Diagnostic[]) => ds.map((d) => `${d.range.start.line + 1}:${d.range.start.character + 1} ${d.message}`);

describe('no false errors', () => {
  test.each(accepted.map((f) => [path.relative(ROOT, f), f]))('%s: no diagnostics in the editor, and fc-run accepts it too', async (_, file) => {
    expect(show(await diagnosticsOf(file))).toEqual([]);
    expect(cliErrors(file)).toEqual([]);
  });

  test('the fixtures hold Firecracker-style nulls at every level, so the test above covers them', () => {
    const nulls = (file: string) => (fs.readFileSync(file, 'utf8').match(/: null\b/g) ?? []).length;
    expect(nulls(path.join(FIXTURES, 'vm_config.json'))).toBeGreaterThanOrEqual(10);
    expect(nulls(path.join(FIXTURES, 'every_optional_null.json'))).toBeGreaterThanOrEqual(30);
    expect(nulls(path.join(EXAMPLES, 'firecracker-config.json'))).toBeGreaterThanOrEqual(5);
  });
});

describe('real errors are flagged, by the editor and the CLI alike', () => {
  const base = fs.readFileSync(EVERY_SECTION, 'utf8');
  const edit = (p: JSONPath, value: unknown) => applyEdits(base, modify(base, p, value, { formattingOptions: { insertSpaces: true, tabSize: 2 } }));
  const rename = (from: string, to: string) => {
    expect(base.split(`"${from}"`).length).toBe(2);
    return base.replace(`"${from}"`, `"${to}"`);
  };
  const lineOf = (text: string, needle: string) => text.slice(0, text.indexOf(needle)).split('\n').length;

  const cases: [string, string, string][] = [
    ['a typo in machine-config', rename('vcpu_count', 'vcpu_cont'), '"vcpu_cont"'],
    ['a typo in a top-level section name', rename('machine-config', 'machine_config'), '"machine_config"'],
    ['a misspelt enum value', edit(['drives', 0, 'cache_type'], 'WriteBack'), '"WriteBack"'],
    ['a string for a number', edit(['network-interfaces', 0, 'mtu'], '1500'), '"1500"'],
    ['null for a required field', edit(['vsock', 'uds_path'], null), '"uds_path": null'],
    ['a typo inside a rate limiter', base.replace('"ops": { "size": 1000', '"opps": { "size": 1000'), '"opps"'],
    ['a typo inside a CPUID modifier', edit(['cpu-config', 'cpuid_modifiers', 0, 'modifiers', 0, 'register'], 'exb'), '"exb"'],
  ];
  test.each(cases)('%s', async (_, text, needle) => {
    const file = path.join(FIXTURES, 'mutated.json');
    const line = lineOf(text, needle);
    const editor = await diagnosticsOf(file, text);
    const cli = cliErrors(file, text);
    expect(editor.map((d) => d.range.start.line + 1)).toContain(line);
    expect(cli.map((i) => i.line)).toContain(line);
  });

  test('a typo inside a token bucket, where Firecracker ignores unknown keys: flagged by the editor, a warning from the CLI', async () => {
    const file = path.join(FIXTURES, 'mutated.json');
    const text = rename('one_time_burst', 'one_time_bust');
    const line = lineOf(text, '"one_time_bust"');
    expect((await diagnosticsOf(file, text)).map((d) => d.range.start.line + 1)).toContain(line);
    expect(cliErrors(file, text)).toEqual([]);
    const { warnings } = loadSpecText(file, text, { skipFiles: true });
    expect(warnings).toEqual([expect.objectContaining({ code: 'unknown-property-ignored', line, hint: 'did you mean "one_time_burst"?' })]);
  });

  test('a config Firecracker refuses (no mem_size_mib) is refused by both, for that reason', async () => {
    const file = path.join(FIXTURES, 'vm_config_missing_mem_size_mib.json');
    const editor = await diagnosticsOf(file);
    expect(editor).toHaveLength(1);
    expect(editor[0].message).toMatch(/mem_size_mib/);
    expect(cliErrors(file).map((i) => i.path)).toEqual([['machine-config', 'mem_size_mib']]);
  });
});

type Schema = Record<string, any>;
const schema = JSON.parse(fs.readFileSync(SCHEMA_PATH, 'utf8')) as Schema;
const deref = (s: Schema): Schema => (typeof s.$ref === 'string' ? deref(schema.definitions[s.$ref.replace('#/definitions/', '')]) : s);

/** The object schema that describes the value at `at`, following $ref, anyOf/oneOf and items. */
function objectSchemaAt(at: JSONPath): Schema {
  let node = schema;
  const asObject = (s: Schema): Schema => {
    const d = deref(s);
    const branch = [...(d.anyOf ?? []), ...(d.oneOf ?? [])].map(deref).find((b) => b.properties);
    return branch ?? d;
  };
  for (const segment of at) node = typeof segment === 'number' ? asObject(node).items : asObject(node).properties[segment];
  return asObject(node);
}

/** The descriptions an editor may show for a property: its own, or its definition's. */
function descriptionsOf(property: Schema): string[] {
  const own = property.description ? [property.description] : [];
  const defs = [property, ...(property.anyOf ?? []), ...(property.oneOf ?? [])].filter((s) => s.$ref).map((s) => deref(s).description);
  return [...own, ...defs].filter((d): d is string => typeof d === 'string');
}

const LEVELS: [string, JSONPath, string][] = [
  ['top level', [], 'machine-config'],
  ['boot-source', ['boot-source'], 'kernel_image_path'],
  ['machine-config', ['machine-config'], 'vcpu_count'],
  ['cpu-config', ['cpu-config'], 'cpuid_modifiers'],
  ['cpu-config.cpuid_modifiers[0]', ['cpu-config', 'cpuid_modifiers', 0], 'subleaf'],
  ['cpu-config.cpuid_modifiers[0].modifiers[0]', ['cpu-config', 'cpuid_modifiers', 0, 'modifiers', 0], 'register'],
  ['cpu-config.msr_modifiers[0]', ['cpu-config', 'msr_modifiers', 0], 'addr'],
  ['drives[0]', ['drives', 0], 'is_root_device'],
  ['drives[0].rate_limiter', ['drives', 0, 'rate_limiter'], 'bandwidth'],
  ['drives[0].rate_limiter.bandwidth', ['drives', 0, 'rate_limiter', 'bandwidth'], 'refill_time'],
  ['network-interfaces[0]', ['network-interfaces', 0], 'host_dev_name'],
  ['network-interfaces[0].rx_rate_limiter', ['network-interfaces', 0, 'rx_rate_limiter'], 'bandwidth'],
  ['vsock', ['vsock'], 'guest_cid'],
  ['mmds-config', ['mmds-config'], 'network_interfaces'],
  ['logger', ['logger'], 'level'],
  ['metrics', ['metrics'], 'metrics_path'],
  ['entropy', ['entropy'], 'rate_limiter'],
  ['balloon', ['balloon'], 'amount_mib'],
  ['pmem[0]', ['pmem', 0], 'path_on_host'],
  ['memory-hotplug', ['memory-hotplug'], 'total_size_mib'],
];

const text = (h: Hover | null): string => {
  const parts = h ? (Array.isArray(h.contents) ? h.contents : [h.contents]) : [];
  // The service escapes markdown punctuation in descriptions.
  return parts.map((p) => (typeof p === 'string' ? p : p.value)).join('\n').replace(/\\([\\`*_{}[\]()#+\-.!<>])/g, '$1');
};
const documented = (item: CompletionItem) => {
  const d = item.documentation;
  return (typeof d === 'string' ? d : (d?.value ?? '')).trim().length > 0;
};

describe('completion offers every property, documented, at every level', () => {
  test.each(LEVELS)('%s', async (_, at, sample) => {
    // The object emptied, with the cursor inside it: every property of that level is a candidate.
    const base = fs.readFileSync(EVERY_SECTION, 'utf8');
    const emptied = at.length === 0 ? '{}' : applyEdits(base, modify(base, at, {}, { formattingOptions: { insertSpaces: true, tabSize: 2 } }));
    const node = findNodeAtLocation(parseTree(emptied)!, at)!;
    expect(node.type).toBe('object');
    const { doc, json } = open(EVERY_SECTION, emptied);
    const list = await service.doComplete(doc, doc.positionAt(node.offset + 1), json);
    const offered = (list?.items ?? []).filter((i) => i.kind === 10 /* CompletionItemKind.Property */);
    const names = offered.map((i) => i.label).sort();
    expect(names).toContain(sample);
    expect(names).toEqual(Object.keys(objectSchemaAt(at).properties).sort());
    expect(offered.filter((i) => !documented(i)).map((i) => i.label)).toEqual([]);
  });
});

describe('hover shows the description of every property, at every level', () => {
  test.each(LEVELS)('%s', async (_, at, sample) => {
    const { doc, json, text: source } = open(EVERY_SECTION);
    const object = findNodeAtLocation(parseTree(source)!, at)!;
    const keys = (object.children ?? []).map((member) => member.children![0]);
    expect(keys.map((k) => k.value)).toContain(sample);
    const props = objectSchemaAt(at).properties as Record<string, Schema>;
    for (const key of keys) {
      const shown = text(await service.doHover(doc, doc.positionAt(key.offset + 1), json));
      const expected = descriptionsOf(props[key.value]);
      expect({ key: key.value, shown: expected.some((d) => shown.includes(d)) }).toEqual({ key: key.value, shown: true });
    }
  });

  test('a section set to null, as in Firecracker\'s configs, is documented too', async () => {
    const file = path.join(FIXTURES, 'vm_config.json');
    const { doc, json, text: source } = open(file);
    const nullSections = ['cpu-config', 'balloon', 'vsock', 'logger', 'metrics', 'mmds-config', 'entropy', 'memory-hotplug'];
    for (const name of nullSections) {
      const key = findNodeAtLocation(parseTree(source)!, [name])!.parent!.children![0];
      const shown = text(await service.doHover(doc, doc.positionAt(key.offset + 1), json));
      expect({ name, shown }).toEqual({ name, shown: schema.properties[name].description });
    }
  });
});
