import { SpecInvalidError } from '../../src/config/issues';
import { issuesOf, load, minimalSpec, Workspace } from '../helpers/specs';

let ws: Workspace;
beforeAll(() => (ws = new Workspace()));
afterAll(() => ws.remove());

describe('malformed JSON', () => {
  test('a syntax error is reported at its line and column', () => {
    const text = '{\n  "boot-source": {\n    "kernel_image_path": "vmlinux",\n  }\n}\n';
    const [issue] = issuesOf(ws, text);
    expect(issue).toMatchObject({ code: 'json-syntax', line: 4, column: 3, severity: 'error' });
    expect(issue.message).toMatch(/malformed JSON/);
  });

  test('only the first syntax error is reported, not the parser\'s follow-on noise', () => {
    expect(issuesOf(ws, '{\n  "boot-source": {,\n}')).toEqual([expect.objectContaining({ code: 'json-syntax', line: 2, column: 19 })]);
  });

  test('comments are refused, as Firecracker refuses them', () => {
    const [issue] = issuesOf(ws, '{ // boot\n "boot-source": { "kernel_image_path": "vmlinux" } }');
    expect(issue).toMatchObject({ code: 'json-syntax', line: 1, column: 3 });
    expect(issue.message).toMatch(/comments are not allowed/);
  });

  test('an empty file says so', () => {
    expect(issuesOf(ws, '')[0].message).toBe('the file is empty');
  });

  test('truncated input points at the end', () => {
    const [issue] = issuesOf(ws, '{"boot-source": {"kernel_image_path": "vml');
    expect(issue).toMatchObject({ code: 'json-syntax', line: 1 });
  });

  test('a duplicate key is an error at the second occurrence', () => {
    const text = '{\n "boot-source": {"kernel_image_path": "vmlinux"},\n "boot-source": {"kernel_image_path": "other"}\n}';
    const issues = issuesOf(ws, text);
    expect(issues).toEqual([expect.objectContaining({ code: 'duplicate-key', line: 3, column: 2, path: ['boot-source'] })]);
  });

  test('an integer too large for a double is an error, not silently rounded', () => {
    const spec = JSON.stringify(minimalSpec()).replace(/}$/, ', "drives": [{"drive_id": "a", "path_on_host": "rootfs.ext4", "is_root_device": false, "is_read_only": true, "rate_limiter": {"bandwidth": {"size": 18446744073709551615, "refill_time": 1}}}]}');
    expect(issuesOf(ws, spec).map((i) => i.code)).toEqual(['integer-too-large']);
  });

  test('a UTF-8 byte order mark is accepted', () => {
    expect(load(ws, '\ufeff' + JSON.stringify(minimalSpec())).spec.machine.vcpu_count).toBe(1);
  });

  test('"__proto__" is an ordinary (unknown) key and never reaches a prototype', () => {
    const text = JSON.stringify(minimalSpec()).replace(/}$/, ', "__proto__": {"polluted": true}}');
    expect(issuesOf(ws, text).map((i) => [i.code, i.path])).toEqual([['unknown-section', ['__proto__']]]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  test('a section hidden under "__proto__" is refused, never read as the section', () => {
    const text = JSON.stringify(minimalSpec()).replace(/}$/, ', "__proto__": {"machine-config": {"vcpu_count": 4, "mem_size_mib": 512}}}');
    expect(issuesOf(ws, text).map((i) => [i.code, i.path])).toEqual([['unknown-section', ['__proto__']]]);
    const nested = JSON.stringify(minimalSpec()).replace(/}}$/, ', "__proto__": {"initrd_path": "initrd.img"}}}');
    expect(issuesOf(ws, nested).map((i) => [i.code, i.path])).toEqual([['unknown-property', ['boot-source', '__proto__']]]);
  });
});

describe('schema errors say what, where and how to fix', () => {
  const spec = (extra: object) => ({ ...minimalSpec(), ...extra });

  test('a missing required property names it and gives an example', () => {
    const [issue] = issuesOf(ws, { 'machine-config': { vcpu_count: 1 } }).filter((i) => i.path.includes('mem_size_mib'));
    expect(issue.message).toBe('required property "mem_size_mib" is missing');
    expect(issue.hint).toBe('add "mem_size_mib", for example "mem_size_mib": 128');
  });

  test('a missing top-level section', () => {
    const issues = issuesOf(ws, {});
    expect(issues.map((i) => i.message)).toEqual(['required property "boot-source" is missing at the top level']);
  });

  test('an unknown nested property is an error with a suggestion, pointing at the key', () => {
    const text = '{\n  "boot-source": {\n    "kernel_image_path": "vmlinux",\n    "boot_arg": "x"\n  }\n}';
    const [issue] = issuesOf(ws, text);
    expect(issue).toMatchObject({ code: 'unknown-property', line: 4, column: 5, message: 'unknown property "boot_arg"', hint: 'did you mean "boot_args"?' });
  });

  test('an unknown top-level section is an error (Firecracker would ignore it and boot with defaults), with a suggestion, pointing at the key', () => {
    const text = '{\n  "boot-source": { "kernel_image_path": "vmlinux" },\n  "machine_config": { "vcpu_count": 2, "mem_size_mib": 256 }\n}';
    expect(issuesOf(ws, text)).toEqual([
      expect.objectContaining({
        severity: 'error',
        code: 'unknown-section',
        path: ['machine_config'],
        line: 3,
        column: 3,
        message: 'unknown top-level section "machine_config"',
        hint: 'did you mean "machine-config"?',
      }),
    ]);
    expect(issuesOf(ws, spec({ drive: [] }))).toEqual([expect.objectContaining({ code: 'unknown-section', hint: 'did you mean "drives"?' })]);
  });

  test('every section Firecracker knows is accepted by the schema, "$schema" and "mmds" too', () => {
    // Those fc-run cannot run yet (balloon, pmem, memory-hotplug) are refused later, at plan time.
    const text = JSON.stringify({
      $schema: 'x.json',
      ...minimalSpec(),
      'machine-config': null, 'cpu-config': null, drives: [], 'network-interfaces': [], vsock: null, 'mmds-config': null,
      mmds: {}, logger: null, metrics: null, entropy: null, balloon: null, pmem: [], 'memory-hotplug': null,
    });
    expect(load(ws, text).warnings.map((w) => w.code)).toEqual(['mmds-unreachable']);
  });

  test('wrong type', () => {
    const [issue] = issuesOf(ws, spec({ 'machine-config': { vcpu_count: '2', mem_size_mib: 128 } }));
    expect(issue.message).toBe('must be an integer, got "2"');
  });

  test('enum with a near miss suggests the right spelling', () => {
    const [issue] = issuesOf(ws, spec({ 'machine-config': { vcpu_count: 1, mem_size_mib: 128, cpu_template: 'T2s' } }));
    expect(issue.message).toMatch(/^must be one of "None", "C3"/);
    expect(issue.hint).toBe('did you mean "T2S"?');
  });

  test('pattern errors describe the expected form in words', () => {
    const [issue] = issuesOf(ws, spec({ 'network-interfaces': [{ iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: 'AA-BB' }] }));
    expect(issue.message).toMatch(/^must be a MAC address: six two-digit hex bytes/);
  });

  test('one-of alternatives report only the branch that was meant', () => {
    expect(issuesOf(ws, spec({ 'cpu-config': 7 })).map((i) => i.message)).toEqual(['must be a string or an object, got 7']);
    expect(issuesOf(ws, spec({ 'cpu-config': '' })).map((i) => i.message)).toEqual(['must not be empty']);
    expect(issuesOf(ws, spec({ 'cpu-config': { msr_modifiers: [{ addr: '0x1' }] } })).map((i) => i.message)).toEqual([
      expect.stringMatching(/^required property "bitmap" is missing/),
    ]);
  });

  test('every error of a spec is reported in one pass, in source order', () => {
    const text = JSON.stringify({ 'boot-source': { kernel_image_path: 5 }, 'machine-config': { vcpu_count: 99, mem_size_mib: -1 } }, null, 2);
    const issues = issuesOf(ws, text);
    expect(issues.map((i) => i.line)).toEqual([...issues.map((i) => i.line ?? 0)].sort((a, b) => a - b));
    expect(issues).toHaveLength(3);
  });

  test('the error is a SpecInvalidError with exit code 2', () => {
    try {
      load(ws, {});
    } catch (err) {
      expect(err).toBeInstanceOf(SpecInvalidError);
      expect((err as SpecInvalidError).exitCode).toBe(2);
      return;
    }
    throw new Error('expected a SpecInvalidError');
  });
});
