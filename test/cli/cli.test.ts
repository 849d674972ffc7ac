import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { minimalSpec, Workspace } from '../helpers/specs';

/** These tests run the built binary (npm test builds first), exactly as a user would. */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');

function fcRun(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: opts.cwd ?? ROOT,
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined, ...opts.env },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let ws: Workspace;
let good: string;
let bad: string;
beforeAll(() => {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` (npm test does) before these tests');
  ws = new Workspace();
  good = ws.write('good.json', minimalSpec());
  bad = ws.write('bad.json', '{\n  "boot-source": { "kernel_image_path": "vmlinux" },\n  "machine-config": { "vcpu_count": 64, "mem_size_mib": 128 }\n}\n');
});
afterAll(() => ws.remove());

describe('fc-run validate', () => {
  test('exit 0, one "ok" line per valid file (a file named twice is one spec) and a summary', () => {
    const r = fcRun(['validate', good, good]);
    expect(r.code).toBe(0);
    expect(r.out.trim().split('\n')).toEqual([`ok    ${good}`, '1 spec: 1 ok']);
  });

  test('exit 2 for an invalid spec, with file:line:col, JSON path, message and fix', () => {
    const r = fcRun(['validate', good, bad]);
    expect(r.code).toBe(2);
    expect(r.out).toContain(`FAIL  ${bad} (1 error)`);
    expect(r.err).toContain(`${bad}:3:37: error[range]: /machine-config/vcpu_count: must be <= 32, got 64`);
  });

  test('malformed JSON exits 2 with the position, not a stack trace', () => {
    const file = ws.write('broken.json', '{\n  "boot-source": {,\n}');
    const r = fcRun(['validate', file]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(new RegExp(`${file.replace(/[.]/g, '\\.')}:2:19: error\\[json-syntax\\]: malformed JSON`));
    expect(r.err).not.toMatch(/at .*\.js:\d+/);
  });

  test('a missing spec file exits 1 and says so', () => {
    const r = fcRun(['validate', path.join(ws.dir, 'nope.json')]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/spec file .*nope\.json does not exist/);
  });

  test('--json gives machine-readable results for every file', () => {
    const r = fcRun(['validate', '--json', good, bad]);
    expect(r.code).toBe(2);
    const result = JSON.parse(r.out);
    expect(result.valid).toBe(false);
    expect(result.files).toEqual([
      { file: good, valid: true, errors: [], warnings: [] },
      {
        file: bad,
        valid: false,
        warnings: [],
        errors: [{ severity: 'error', code: 'range', file: bad, line: 3, column: 37, path: '/machine-config/vcpu_count', message: 'must be <= 32, got 64' }],
      },
    ]);
  });

  test('the precompiled validator gives the same messages as the run-time one (one-of pruning included)', () => {
    const file = ws.write('cpu7.json', { ...minimalSpec(), 'cpu-config': 7, 'machine-config': { vcpu_count: 1, mem_size_mib: 128, cpu_template: 'T2s' } });
    const r = fcRun(['validate', '--json', file]);
    const messages = JSON.parse(r.out).files[0].errors.map((e: { message: string; hint?: string }) => [e.message, e.hint]);
    expect(messages).toEqual([
      ['must be a string or an object, got 7', undefined],
      [expect.stringMatching(/^must be one of "None", "C3"/), 'did you mean "T2S"?'],
    ]);
  });

  test('--skip-files validates specs whose artifacts live elsewhere', () => {
    const file = ws.write('elsewhere.json', { 'boot-source': { kernel_image_path: '/nonexistent/vmlinux' } });
    expect(fcRun(['validate', file]).code).toBe(2);
    expect(fcRun(['validate', '--skip-files', file]).code).toBe(0);
  });

  test('every bundled example validates', () => {
    const examples = fs.readdirSync(path.join(ROOT, 'examples')).filter((f) => f.endsWith('.json')).map((f) => path.join('examples', f));
    expect(examples.length).toBeGreaterThanOrEqual(3);
    const r = fcRun(['validate', '--skip-files', ...examples]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
  });

  test("the first example of validate's --help works after the README's set-up: every example, with its files", () => {
    // npm test runs `npm run setup`, which builds the probe guest and the examples' disk images.
    const help = fcRun(['validate', '--help']);
    expect(help.out).toContain('fc-run validate examples/*.json');
    const examples = fs.readdirSync(path.join(ROOT, 'examples')).filter((f) => f.endsWith('.json')).map((f) => path.join('examples', f));
    const r = fcRun(['validate', ...examples]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toContain(`${examples.length} specs: ${examples.length} ok`);
  });

  test('color only on a terminal: plain text in pipes, ANSI codes when forced', () => {
    expect(fcRun(['validate', bad]).err).not.toMatch(/\u001b\[/);
    expect(fcRun(['validate', bad], { env: { NO_COLOR: undefined, FORCE_COLOR: '1' } }).err).toMatch(/\u001b\[31m/);
  });
});

describe('fc-run plan', () => {
  test('prints the memory map, devices with MMIO and IRQ, the command line and a plan hash', () => {
    const spec = ws.write('plan.json', {
      ...minimalSpec(),
      drives: [{ drive_id: 'rootfs', path_on_host: 'rootfs.ext4', is_root_device: true, is_read_only: false }],
    });
    const r = fcRun(['plan', spec]);
    expect(r.code).toBe(0);
    expect(r.out).toContain('Memory map (e820)');
    expect(r.out).toMatch(/0x100000 +0x8000000 +127 MiB +ram/);
    expect(r.out).toMatch(/0 +block +rootfs +0xc0001000\+4K +5 +.*rootfs\.ext4, rw, root/);
    expect(r.out).toContain('console=ttyS0 reboot=k panic=1 root=/dev/vda rw virtio_mmio.device=4K@0xc0001000:5');
    expect(r.out).toMatch(/Plan hash +sha256:[0-9a-f]{64}/);
  });

  test('--json prints the plan and a hash that is the SHA-256 of its canonical form', () => {
    const r = fcRun(['plan', '--json', good]);
    expect(r.code).toBe(0);
    const { hash, plan } = JSON.parse(r.out);
    const { createHash } = require('node:crypto') as typeof import('node:crypto');
    expect(createHash('sha256').update(JSON.stringify(plan)).digest('hex')).toBe(hash);
    expect(plan.vcpus).toEqual({ count: 1, smt: false });
  });

  test('the same spec prints the same plan twice', () => {
    expect(fcRun(['plan', '--json', good]).out).toBe(fcRun(['plan', '--json', good]).out);
  });

  test('an unsupported feature exits 2 with "not supported by fc-run yet"', () => {
    const spec = ws.write('balloon.json', { ...minimalSpec(), balloon: { amount_mib: 64, deflate_on_oom: true } });
    const r = fcRun(['plan', spec]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('error[not-supported]: /balloon: the balloon device is not supported by fc-run yet');
  });
});

describe('fc-run run', () => {
  test('a static CPU template made for the other CPU vendor is refused before anything starts: exit 2, template and vendor named', () => {
    const vendor = /^vendor_id\s*:\s*(\S+)/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
    // T2A is AMD's, the others Intel's: ask for the one this host cannot be.
    const [template, needs] = vendor === 'AuthenticAMD' ? ['T2', 'an Intel'] : ['T2A', 'an AMD'];
    const spec = ws.write('other-vendor.json', { ...minimalSpec(), 'machine-config': { vcpu_count: 1, mem_size_mib: 128, cpu_template: template } });
    for (const args of [[spec], ['run', spec]]) {
      const r = fcRun(args);
      expect(r.code).toBe(2);
      expect(r.err).toContain(`other-vendor.json:9:21: error[cpu-template-vendor]: /machine-config/cpu_template: cpu_template ${template} needs ${needs} host; this host is ${vendor}`);
      expect(r.out).toBe('');
    }
    // validate (with the files) checks what run checks, the host included; --skip-files does not.
    const v = fcRun(['validate', spec]);
    expect(v.code).toBe(2);
    expect(v.err).toContain('error[cpu-template-vendor]');
    expect(fcRun(['validate', '--skip-files', spec]).code).toBe(0);
    // Planning does not depend on the host: the plan says what the template needs.
    const plan = fcRun(['plan', '--json', spec]);
    expect(plan.code).toBe(0);
    expect(JSON.parse(plan.out).plan.cpuTemplate).toMatchObject({ kind: 'static', name: template, vendor: vendor === 'AuthenticAMD' ? 'GenuineIntel' : 'AuthenticAMD' });
  });

  test('the Firecracker-style CPU template fixtures validate and plan', () => {
    const dir = path.join(ROOT, 'test', 'fixtures', 'firecracker');
    const specs = fs.readdirSync(dir).filter((f) => /^vm_config_(cpu_template|custom)_/.test(f)).map((f) => path.join(dir, f));
    expect(specs.length).toBe(10);
    // --skip-files: the probe kernel they name is built by `npm run build:probe`, not by `npm run build`.
    const v = fcRun(['validate', '--skip-files', ...specs]);
    expect(v.code).toBe(0);
    expect(v.out.trim().split('\n')).toEqual([...specs.map((s) => `ok    ${s}`), '10 specs: 10 ok']);
    if (!fs.existsSync(path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf'))) return;
    for (const t of ['C3', 'T2', 'T2S', 'T2CL', 'T2A']) {
      const stat = fcRun(['plan', '--json', path.join(dir, `vm_config_cpu_template_${t}.json`)]);
      const custom = fcRun(['plan', '--json', path.join(dir, `vm_config_custom_${t}.json`)]);
      expect([stat.code, custom.code]).toEqual([0, 0]);
      const [s, c] = [JSON.parse(stat.out).plan.cpuTemplate, JSON.parse(custom.out).plan.cpuTemplate];
      expect([s.kind, c.kind]).toEqual(['static', 'custom']);
      expect(s.cpuid).toEqual(c.cpuid);
      expect(s.msr).toEqual(c.msr);
    }
  });

  test('an invalid spec still exits 2', () => {
    expect(fcRun([bad]).code).toBe(2);
  });
});

describe('the rest of the CLI', () => {
  test('schema prints the JSON Schema', () => {
    const r = fcRun(['schema']);
    expect(r.code).toBe(0);
    const schema = JSON.parse(r.out);
    expect(schema.title).toBe('VmSpec');
    expect(schema.properties['boot-source']).toBeDefined();
  });

  test('--help shows examples for every command', () => {
    for (const cmd of [[], ['validate'], ['plan'], ['schema'], ['run']]) {
      const r = fcRun([...cmd, '--help']);
      expect(r.code).toBe(0);
      expect(r.out).toContain('Examples:');
    }
  });

  test('--version prints the package version', () => {
    const r = fcRun(['--version']);
    expect(r.code).toBe(0);
    expect(r.out.trim()).toBe(`fc-run v${JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version}`);
  });

  test('an unknown option is a usage error, exit 1', () => {
    const r = fcRun(['validate', good, '--frobnicate']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/unknown option --frobnicate/);
  });
});
