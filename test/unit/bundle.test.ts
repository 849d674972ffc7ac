import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { BUNDLE_PREFIX } from '../../src/code-cache';
import { PACKAGE_ROOT, VCPU_WORKER_SCRIPT, VMM_WORKER_SCRIPT } from '../../src/package-root';
import { threadLoaderCode } from '../../src/vmm/threads';

// The bundles scripts/bundle.js writes (npm run build): what bin/fc-run and the threads load.
const BUNDLE = path.join(PACKAGE_ROOT, 'dist', 'bundle');
const BIN = path.join(PACKAGE_ROOT, 'bin', 'fc-run');

/** The modules a bundle still loads at run time: Node's built-ins and the native addon only. */
function requiresOf(file: string): string[] {
  const text = fs.readFileSync(file, 'latin1');
  return [...new Set([...text.matchAll(/\brequire\("([^"]+)"\)/g)].map((m) => m[1]))].filter((r) => !r.startsWith('node:'));
}

describe('bundles', () => {
  it('load nothing from the compiled tree or node_modules (but ajv, the schema compiler the CLI never reaches)', () => {
    expect(requiresOf(path.join(BUNDLE, 'cli.js')).filter((r) => !r.startsWith('ajv'))).toEqual([]);
    expect(requiresOf(path.join(BUNDLE, 'cli-light.js')).filter((r) => !r.startsWith('ajv'))).toEqual([]);
    expect(requiresOf(VCPU_WORKER_SCRIPT)).toEqual([]);
    expect(requiresOf(VMM_WORKER_SCRIPT)).toEqual([]);
  });

  const accepted = (bundle: string, cache: string) =>
    execFileSync(process.execPath, ['-e', `process.stdout.write(String(require(${JSON.stringify(path.join(PACKAGE_ROOT, 'dist', 'code-cache.js'))}).compileBundle(${JSON.stringify(bundle)}, ${JSON.stringify(cache)}).cacheUsed))`], { encoding: 'utf8' });

  it('both CLI bundles are stored wrapped, in ASCII, each with a code cache V8 accepts', () => {
    for (const name of ['cli.js', 'cli-light.js']) {
      const text = fs.readFileSync(path.join(BUNDLE, name));
      expect(text.subarray(0, BUNDLE_PREFIX.length).toString('latin1')).toBe(BUNDLE_PREFIX);
      expect(text.every((b) => b < 0x80)).toBe(true);
      expect(accepted(path.join(BUNDLE, name), path.join(BUNDLE, `${name}.cache`))).toBe('true');
    }
    // The whole bundle's cache holds what a launch runs (scripts/warm-cache.js), or every function; the light one's what plan and validate ran.
    expect(fs.statSync(path.join(BUNDLE, 'cli.js.cache')).size).toBeGreaterThan(fs.statSync(path.join(BUNDLE, 'cli-light.js.cache')).size);
  });

  it('the light bundle leaves the launching commands out; bin/fc-run starts every other command from it, and each works', () => {
    const light = fs.readFileSync(path.join(BUNDLE, 'cli-light.js'), 'latin1');
    const whole = fs.readFileSync(path.join(BUNDLE, 'cli.js'), 'latin1');
    expect(light.length).toBeLessThan(whole.length * 0.6);
    for (const mod of ['dist/vmm/microvm.js', 'dist/jail/jail.js', 'dist/cli/commands/run.js', 'dist/kvm/seccompiler.js']) {
      expect(whole).toContain(`"${mod}"`);
      expect(light).not.toContain(`"${mod}"`);
    }
    // bin/fc-run reads the bundle it picks (seen through a preloaded hook on fs.openSync) and runs the command from it.
    const hook = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-hook-')), 'hook.js');
    fs.writeFileSync(hook, `const fs = require('node:fs'); const open = fs.openSync; fs.openSync = function (f, ...rest) { if (/bundle\\/cli[^/]*\\.js$/.test(String(f))) process.stderr.write('read ' + require('node:path').basename(String(f)) + '\\n'); return open.call(this, f, ...rest); };`);
    const started = (args: string[]) => spawnSync(process.execPath, ['-r', hook, BIN, ...args], { encoding: 'utf8' });
    const lightCommands = JSON.parse(/^const LIGHT_COMMANDS = (\[.*\]);$/m.exec(fs.readFileSync(BIN, 'utf8'))![1]) as string[];
    expect(lightCommands).toEqual(expect.arrayContaining(['plan', 'validate', '--version']));
    for (const first of lightCommands) {
      const r = started(first.startsWith('-') ? [first] : [first, '--help']);
      expect({ first, status: r.status, err: r.stderr }).toEqual({ first, status: 0, err: 'read cli-light.js\n' });
      expect(r.stdout).toMatch(first.startsWith('-') ? /^fc-run v/ : new RegExp(`^Usage: fc-run ${first}`));
    }
    for (const args of [['run', '--help'], ['help'], ['--help'], ['jail', '--help'], ['nowhere.json'], ['--version', '--help'], ['-V', '-h']]) {
      const r = started(args);
      expect(r.stderr).toMatch(/^read cli\.js\n/);
      expect(r.status).toBe(r.stdout.startsWith('Usage: fc-run') ? 0 : 1);
    }
    // --version with --help shows the overview (every command's): whole bundle; after --, --help is no option.
    expect(started(['--version', '--help']).stdout).toMatch(/^Usage: fc-run <spec>/);
    expect(started(['--version', '--', '--help'])).toMatchObject({ stderr: 'read cli-light.js\n', stdout: expect.stringMatching(/^fc-run v/) });
    expect(fs.readFileSync(BIN, 'utf8')).toContain(`source.startsWith('${BUNDLE_PREFIX}')`);
    fs.rmSync(path.dirname(hook), { recursive: true, force: true });
    // A launching command reached in the light bundle says so instead of failing obscurely.
    const probe = `require(${JSON.stringify(path.join(PACKAGE_ROOT, 'dist', 'code-cache.js'))}).loadBundle(${JSON.stringify(path.join(BUNDLE, 'cli-light.js'))}, require).exports.main(['help', 'run']).then((c) => process.exit(c))`;
    const r = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/commands\/run is not in the light CLI bundle/);
  });

  it('every name fc-run imports from jsonc-parser is one the bundles take of it (a missing one would be undefined at run time)', () => {
    const entry = fs.readFileSync(path.join(PACKAGE_ROOT, 'scripts', 'jsonc-parser-entry.mjs'), 'utf8');
    const exported = new Set([...entry.matchAll(/export \{([^}]*)\}/g)].flatMap((m) => m[1].split(',').map((n) => n.trim())));
    const imported = new Set<string>();
    const walk = (dir: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const f = path.join(dir, e.name);
        if (e.isDirectory()) walk(f);
        else if (f.endsWith('.ts')) {
          for (const m of fs.readFileSync(f, 'utf8').matchAll(/import \{([^}]*)\} from 'jsonc-parser'/g)) {
            for (const n of m[1].split(',').map((x) => x.trim()).filter(Boolean)) if (!n.startsWith('type ')) imported.add(n);
          }
        }
      }
    };
    walk(path.join(PACKAGE_ROOT, 'src'));
    // Types and const enums leave nothing behind at run time.
    const typeOnly = new Set(['Node', 'ParseError', 'SyntaxKind']);
    expect([...imported].filter((n) => !typeOnly.has(n) && !exported.has(n))).toEqual([]);
    expect(imported.size).toBeGreaterThan(2);
  });

  it('a start loads neither the native addon nor the launch path, worker_threads nor node:crypto to plan a spec', () => {
    const probe = `
      const before = new Set(process.moduleLoadList);
      const b = require(${JSON.stringify(path.join(PACKAGE_ROOT, 'dist', 'code-cache.js'))}).loadBundle(${JSON.stringify(path.join(BUNDLE, 'cli-light.js'))}, require);
      const sink = { write: () => true, isTTY: false };
      b.exports.main(['plan', ${JSON.stringify(path.join(PACKAGE_ROOT, 'examples', 'hello.json'))}], { out: sink, err: sink }).then((code) => {
        const loaded = process.moduleLoadList.filter((m) => !before.has(m));
        const native = Object.keys(require.cache).filter((f) => f.endsWith('.node'));
        // The native addon is loaded with process.dlopen (src/kvm/libc.ts), which require.cache does not see: its mapping would be.
        const mapped = require('node:fs').readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes('.node'));
        process.stdout.write(JSON.stringify({ code, loaded, native, mapped }));
      });`;
    // From a script file: `node -e` itself loads node:crypto before the probe runs.
    const script = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-bundle-')), 'probe.js');
    fs.writeFileSync(script, probe);
    const r = JSON.parse(execFileSync(process.execPath, [script], { encoding: 'utf8' })) as { code: number; loaded: string[]; native: string[]; mapped: string[] };
    expect(r.code).toBe(0);
    expect(r.native).toEqual([]);
    expect(r.mapped).toEqual([]);
    fs.rmSync(path.dirname(script), { recursive: true, force: true });
    // node:vm compiles the bundle; nothing else of Node's is loaded to plan (node:os was, for errno names).
    expect(r.loaded).toEqual(['NativeModule vm']);
  });

  it('the thread bundles are stored wrapped and their code caches are accepted in a thread', async () => {
    for (const bundle of [VCPU_WORKER_SCRIPT, VMM_WORKER_SCRIPT]) {
      expect(fs.readFileSync(bundle, 'latin1').startsWith(BUNDLE_PREFIX)).toBe(true);
      const code = `const { compileBundle } = require(${JSON.stringify(path.join(PACKAGE_ROOT, 'dist', 'code-cache.js'))});
        require('node:worker_threads').parentPort.postMessage(compileBundle(${JSON.stringify(bundle)}).cacheUsed);`;
      const w = new Worker(code, { eval: true });
      const used = await new Promise((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
      });
      await w.terminate();
      expect(used).toBe(true);
    }
  });

  it('the vCPU thread loads its bundle (koffi and the device models included) and waits for its vCPU', async () => {
    const w = new Worker(`${threadLoaderCode(VCPU_WORKER_SCRIPT)}; require('node:worker_threads').parentPort.postMessage('loaded');`, { eval: true });
    const errors: Error[] = [];
    w.on('error', (e) => errors.push(e));
    // The bundle posts {kind: 'loaded'} itself once its modules were evaluated without throwing
    // (fc-run waits for it before installing its seccomp filters); the loader's 'loaded' follows.
    const first = await new Promise((resolve) => {
      w.once('message', resolve);
      w.once('exit', () => resolve('exited'));
    });
    await w.terminate();
    expect(errors).toEqual([]);
    expect(first).toEqual({ kind: 'loaded' });
  });

  it('the VMM thread loads its bundle and then needs the data a launch gives it', async () => {
    const w = new Worker(threadLoaderCode(VMM_WORKER_SCRIPT), { eval: true });
    const failure = await new Promise<Error>((resolve) => w.once('error', resolve));
    await w.terminate();
    // Not a missing module: the first statement that reads workerData failed.
    expect(failure.message).not.toMatch(/Cannot find module|not an fc-run bundle/);
    expect(failure.message).toMatch(/undefined/);
  });

  it('bin/fc-run says how to build when the bundle is missing, and exits 1', () => {
    const copy = fs.mkdtempSync(path.join(PACKAGE_ROOT, 'dist', '.bin-test-'));
    try {
      fs.mkdirSync(path.join(copy, 'bin'));
      fs.copyFileSync(BIN, path.join(copy, 'bin', 'fc-run'));
      const r = spawnSync(process.execPath, [path.join(copy, 'bin', 'fc-run'), '--version'], { encoding: 'utf8' });
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/not built yet\. Run "npm ci && npm run build"/);
    } finally {
      fs.rmSync(copy, { recursive: true, force: true });
    }
  });
});
