import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { BUNDLE_PREFIX } from '../../src/code-cache';
import { PACKAGE_ROOT, VCPU_WORKER_SCRIPT, VMM_WORKER_SCRIPT } from '../../src/package-root';

// The bundles scripts/bundle.js writes (npm run build): what bin/fc-run and the threads load.
const BUNDLE = path.join(PACKAGE_ROOT, 'dist', 'bundle');
const BIN = path.join(PACKAGE_ROOT, 'bin', 'fc-run');

/** The modules a bundle still loads at run time: Node's built-ins and the native addon only. */
function requiresOf(file: string): string[] {
  const text = fs.readFileSync(file, 'latin1');
  return [...new Set([...text.matchAll(/\brequire\("([^"]+)"\)/g)].map((m) => m[1]))].filter((r) => !r.startsWith('node:'));
}

describe('bundles', () => {
  it('load nothing from the compiled tree: only koffi (and ajv, the schema compiler the CLI never reaches) from node_modules', () => {
    expect(requiresOf(path.join(BUNDLE, 'cli.js')).filter((r) => !r.startsWith('ajv'))).toEqual(['koffi']);
    expect(requiresOf(VCPU_WORKER_SCRIPT)).toEqual(['koffi']);
    expect(requiresOf(VMM_WORKER_SCRIPT)).toEqual(['koffi']);
  });

  it('the CLI bundle is stored wrapped, in ASCII, with a code cache V8 accepts', () => {
    const text = fs.readFileSync(path.join(BUNDLE, 'cli.js'));
    expect(text.subarray(0, BUNDLE_PREFIX.length).toString('latin1')).toBe(BUNDLE_PREFIX);
    expect(text.every((b) => b < 0x80)).toBe(true);
    const probe = `const b = require(${JSON.stringify(path.join(PACKAGE_ROOT, 'dist', 'code-cache.js'))}).loadBundle(${JSON.stringify(path.join(BUNDLE, 'cli.js'))}, require); process.stdout.write(String(b.cacheUsed));`;
    expect(execFileSync(process.execPath, ['-e', probe], { encoding: 'utf8' })).toBe('true');
  });

  it('a start loads neither koffi nor the launch path, worker_threads nor node:crypto to plan a spec', () => {
    const probe = `
      const before = new Set(process.moduleLoadList);
      const b = require(${JSON.stringify(path.join(PACKAGE_ROOT, 'dist', 'code-cache.js'))}).loadBundle(${JSON.stringify(path.join(BUNDLE, 'cli.js'))}, require);
      const sink = { write: () => true, isTTY: false };
      b.exports.main(['plan', ${JSON.stringify(path.join(PACKAGE_ROOT, 'examples', 'hello.json'))}], { out: sink, err: sink }).then((code) => {
        const loaded = process.moduleLoadList.filter((m) => !before.has(m));
        const native = Object.keys(require.cache).filter((f) => f.endsWith('.node') || f.includes('koffi'));
        process.stdout.write(JSON.stringify({ code, loaded, native }));
      });`;
    // From a script file: `node -e` itself loads node:crypto before the probe runs.
    const script = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-bundle-')), 'probe.js');
    fs.writeFileSync(script, probe);
    const r = JSON.parse(execFileSync(process.execPath, [script], { encoding: 'utf8' })) as { code: number; loaded: string[]; native: string[] };
    expect(r.code).toBe(0);
    expect(r.native).toEqual([]);
    fs.rmSync(path.dirname(script), { recursive: true, force: true });
    expect(r.loaded.filter((m) => /\b(worker_threads|crypto|net|tty|http)$/.test(m))).toEqual([]);
    expect(r.loaded.length).toBeGreaterThan(0); // the probe does see what loads
  });

  it('the vCPU thread bundle loads (koffi and the device models included) and waits for its vCPU', async () => {
    const w = new Worker(VCPU_WORKER_SCRIPT);
    const errors: Error[] = [];
    w.on('error', (e) => errors.push(e));
    await new Promise((resolve) => w.once('online', resolve));
    // Module evaluation is over once a message round-trips the event loop; the thread stays idle.
    await new Promise((resolve) => setImmediate(resolve));
    await w.terminate();
    expect(errors).toEqual([]);
  });

  it('the VMM thread bundle loads its modules and then needs the data a launch gives it', async () => {
    const w = new Worker(VMM_WORKER_SCRIPT);
    const failure = await new Promise<Error>((resolve) => w.once('error', resolve));
    await w.terminate();
    // Not a missing module: the first statement that reads workerData failed.
    expect(failure.message).not.toMatch(/Cannot find module/);
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
